"""SparseMLRecipe through the real CLI: per-layer sparsity, QAT modules, resume mid-recipe, test from checkpoint,
distillation loss, recipe errors; and the compatibility fixes it needs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.callbacks.sparseml_recipe import SparseMLRecipe
from lit_kd.sparse.recipe import read_recipe
from tests.helpers import load_state, run_cli, write_config

REPO = Path(__file__).resolve().parents[1]
# 7 steps per epoch on the fixture (240 images, batch 32, last partial batch dropped):
# prune 5 % -> 80 % over epochs 0-2, QAT from epoch 2, ranges frozen from epoch 3
RECIPE_ARGS = {"num_epochs": 4, "pruning_end_epoch": 2.0, "final_sparsity": 0.8, "qat_start_epoch": 2.0}

pytestmark = pytest.mark.sparse  # SparseML recipes, QAT-to-integer export and DeepSparse throughout


def recipe_config(path: Path, data_dir: Path, extra_callbacks=(), recipe="gmp_qat.yaml", recipe_args=RECIPE_ARGS, **model) -> Path:
    write_config(path, data_dir, model="resnet8", epochs=1, lr_scheduler=None)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"].update(model)
    callback = {
        "class_path": "lit_kd.callbacks.SparseMLRecipe",
        "init_args": {"recipe": str(REPO / "experiments" / "recipes" / recipe), "recipe_args": recipe_args},
    }
    config["trainer"]["callbacks"] = [callback, *extra_callbacks]
    path.write_text(yaml.safe_dump(config))
    return path


def layer_sparsity(state: dict) -> dict[str, float]:
    """Fraction of zeros of every conv/linear weight in a checkpoint's state dict (QAT-wrapped names included)."""
    return {
        k: (v == 0).float().mean().item() for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4) and "fake_quant" not in k
    }


def test_recipe_prunes_quantizes_resumes_and_tests(in_tmp, tiny_zip):
    config = recipe_config(in_tmp / "sparse.yaml", tiny_zip)
    full = run_cli("fit", "--config", config)
    assert full.trainer.current_epoch == 4  # the recipe's epoch range set max_epochs
    run_dir = Path(full.trainer.logger.log_dir)
    state = load_state(run_dir / "checkpoints" / "last.ckpt")
    sparsity = layer_sparsity(state)
    # resnet8: 7 convs (parameter-free shortcuts) + the linear layer, each pruned to the recipe's 80 %
    assert len(sparsity) == 8 and all(abs(s - 0.8) <= 0.01 for s in sparsity.values()), sparsity
    assert any("weight_fake_quant" in k for k in state) and any("activation_post_process" in k for k in state)
    callback_state = next(
        v for k, v in torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"].items() if "SparseMLRecipe" in k
    )
    assert callback_state["epoch"] == pytest.approx(4.0) and "GMPruningModifier" in callback_state["recipe"]

    # crashes mid-pruning (epoch 1) and mid-QAT (epoch 3), each resumed from last.ckpt: same weights and QAT state
    for crash_epoch in (1, 3):
        crash = {"class_path": "tests.helpers.CrashAtEpoch", "init_args": {"epoch": crash_epoch}}
        crashing = recipe_config(in_tmp / f"crash{crash_epoch}.yaml", tiny_zip, extra_callbacks=[crash])
        with pytest.raises(RuntimeError, match=r"simulated crash"):
            run_cli("fit", "--config", crashing)
        last = sorted((in_tmp / "lightning_logs" / f"crash{crash_epoch}").glob("version_*/checkpoints/last.ckpt"))[-1]
        resumed = run_cli("fit", "--config", recipe_config(in_tmp / f"crash{crash_epoch}.yaml", tiny_zip), "--ckpt_path", last)
        resumed_state = load_state(Path(resumed.trainer.logger.log_dir) / "checkpoints" / "last.ckpt")
        assert resumed_state.keys() == state.keys()
        for key, value in state.items():
            assert torch.allclose(resumed_state[key].float(), value.float(), atol=1e-6), (crash_epoch, key)

    # `lit-kd test` reads the sparsified QAT checkpoint with the same config and reproduces its accuracy
    tested = run_cli("test", "--config", config, "--ckpt_path", run_dir / "checkpoints" / "last.ckpt")
    validated = run_cli("validate", "--config", config, "--ckpt_path", run_dir / "checkpoints" / "last.ckpt")
    assert tested.trainer.callback_metrics["test/acc"] == pytest.approx(validated.trainer.callback_metrics["val/acc"].item())


def test_pruning_only_recipe_with_distillation_loss(in_tmp, tiny_zip):
    teacher = run_cli("fit", "--config", write_config(in_tmp / "teacher.yaml", tiny_zip, model="resnet8", epochs=1))
    teacher_ckpt = in_tmp / teacher.trainer.checkpoint_callback.best_model_path
    pruning_args = {k: v for k, v in RECIPE_ARGS.items() if k != "qat_start_epoch"}
    config = recipe_config(in_tmp / "distil.yaml", tiny_zip, recipe="gmp.yaml", recipe_args=pruning_args)
    data = yaml.safe_load(config.read_text())
    data["model"] = {
        "class_path": "lit_kd.modules.DistillationModule",
        "init_args": {"student": "resnet8", "teacher_ckpt": str(teacher_ckpt), "losses": ["ce", "soft_ce"]},
    }
    config.write_text(yaml.safe_dump(data))
    cli = run_cli("fit", "--config", config)
    module = cli.model
    student_sparsity = [
        (m.weight == 0).float().mean().item() for m in module.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert all(abs(s - 0.8) <= 0.01 for s in student_sparsity)
    teacher_zeros = sum(int((p == 0).sum()) for p in module.teacher.parameters())
    assert teacher_zeros < 0.01 * sum(p.numel() for p in module.teacher.parameters())  # the teacher is not pruned
    assert not any("teacher" in k for k in load_state(Path(cli.trainer.logger.log_dir) / "checkpoints" / "last.ckpt"))


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml' does not exist"):
        SparseMLRecipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_epochs: 3\nmodifiers:\n  - !EpochRangeModifier\n    start_epoch: [0.0\n")
    with pytest.raises(ValueError, match=r"does not parse \(line \d+\)"):
        read_recipe(str(bad))


def test_stopping_rule_is_refused(in_tmp, tiny_zip):
    stop = {"class_path": "lit_kd.callbacks.AccuracyPlateauStopping", "init_args": {"monitor": "val/acc"}}
    with pytest.raises(ValueError, match=r"fixed schedule of 4 epochs.*AccuracyPlateauStopping"):
        run_cli("fit", "--config", recipe_config(in_tmp / "stop.yaml", tiny_zip, extra_callbacks=[stop]))


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the fixes must not already be applied), in ``cwd`` (SparseML writes
    ``sparse_logs/`` into the working directory when a manager gets no logger)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "NM_DISABLE_ANALYTICS": "1", "PYTHONPATH": str(REPO)},
    )


QAT_RECIPE = "modifiers:\n  - !QuantizationModifier\n    start_epoch: 0.0\n"
APPLY_QAT = (
    "import torch, sparseml.pytorch.sparsification\n"
    "from sparseml.pytorch.optim import ScheduledModifierManager\n"
    "from lit_kd.models import build_model\n"
    "m = build_model('resnet8')\n"
    f"ScheduledModifierManager.from_yaml({QAT_RECIPE!r}).apply_structure(m, epoch=0.0)\n"
    "print(sum('fake_quant' in n for n, _ in m.named_modules()))\n"
)


def test_qconfig_fix_is_needed_and_sufficient(tmp_path):
    bare = python(APPLY_QAT, tmp_path)
    assert bare.returncode != 0 and "has no attribute 'quantization_scheme'" in bare.stderr
    fixed = python("from lit_kd.compat.sparseml import apply_sparseml_compat; apply_sparseml_compat()\n" + APPLY_QAT, tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert int(fixed.stdout.split()[-1]) >= 8  # fake quantization on every conv and the linear layer


QAT_ONLY_RECIPE = """
modifiers:
  - !QuantizationModifier
    start_epoch: 0.0
"""


def qat_structure_output(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``network`` (eval mode) after SparseML's QAT structure, with fake quantization switched off."""
    from torch.ao.quantization import disable_fake_quant, disable_observer

    from lit_kd.sparse.recipe import build_manager, quiet_loggers

    network = copy.deepcopy(network).train()
    build_manager(QAT_ONLY_RECIPE).apply_structure(network, epoch=0.0, loggers=quiet_loggers())
    assert any("weight_fake_quant" in name for name, _ in network.named_modules())
    network.apply(disable_fake_quant).apply(disable_observer).eval()
    with torch.no_grad():
        return network(x)


def with_running_statistics(network: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for _ in range(3):
            network.train()(torch.randn(16, 3, 32, 32))
    return network.eval()


@pytest.mark.parametrize("name", ["resnet8", "resnet18", "resnet50", "resnet101_trunc"])
def test_sparseml_qat_fusion_keeps_the_function_of_every_architecture(name):
    from lit_kd.models import build_model

    torch.manual_seed(0)
    network = with_running_statistics(build_model(name))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = network(x)
    assert torch.allclose(qat_structure_output(network, x), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def test_torchvision_blocks_as_they_are_lose_their_relus_in_sparseml_fusion():
    """Why lit_kd.models.fusable_blocks exists: torchvision's shared ReLU is fused away (replaced by Identity)."""
    import torchvision

    torch.manual_seed(0)
    network = with_running_statistics(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = network(x)
    assert not torch.allclose(qat_structure_output(network, x), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())
