"""IterativePruning through the real CLI on the fixture data: exact budget, masks that hold, resume, distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lit_kd.artifacts import load_model
from lit_kd.callbacks import IterativePruning
from lit_kd.models import build_model, model_summary
from lit_kd.modules import ClassifierModule, load_network
from tests.helpers import load_state, run_cli, run_cli_in, scalars, write_config

RESNET8_PARAMS = 75_290
TARGET = 22_587  # 30 % of ResNet-8: a cycle of 50 % at epoch 0, the next (epoch 2) lands exactly on the target
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}}


def pruning_config(path: Path, data_dir: Path, epochs: int, module: dict | None = None, **callback_args) -> Path:
    """A small ResNet-8 fit (3 batches of 16 per epoch) with IterativePruning; SGD with momentum and weight decay."""
    write_config(path, data_dir, model="resnet8", epochs=epochs, batch_size=16, optimizer=SGD)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["num_example_images"] = 0
    if module is not None:
        config["model"] = module
    callback_args = {"target_nonzero": TARGET, "prune_fraction": 0.5, "finetune_epochs": 2} | callback_args
    config["trainer"] |= {
        "limit_train_batches": 3,
        "callbacks": [{"class_path": "lit_kd.callbacks.IterativePruning", "init_args": callback_args}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def nonzero(network: torch.nn.Module) -> int:
    """Counted directly from the parameters (independent of model_summary)."""
    return sum(int((p != 0).sum()) for p in network.parameters())


def pruning_callback(cli) -> IterativePruning:
    return next(c for c in cli.trainer.callbacks if isinstance(c, IterativePruning))


@pytest.fixture(scope="module")
def full_run(tiny_zip, tmp_path_factory):
    """Three epochs uninterrupted: pruning at epochs 0 and 2 (two epochs per cycle)."""
    root = tmp_path_factory.mktemp("prune")
    cli = run_cli_in(root, "fit", "--config", pruning_config(root / "prune.yaml", tiny_zip, epochs=3))
    return root, root / cli.trainer.logger.log_dir, pruning_callback(cli).history


def test_prunes_to_the_exact_target_in_shrinking_cycles(full_run):
    _root, run_dir, history = full_run
    assert [epoch for epoch, _ in history] == [0, 2]
    counts = [count for _, count in history]
    assert counts[0] > counts[1] == TARGET
    # the first cycle removes half of the 74,800 conv/linear weights of the fresh network (BatchNorm biases start at 0)
    assert counts[0] == nonzero(build_model("resnet8")) - 74_800 // 2

    last = run_dir / "checkpoints" / "last.ckpt"
    assert not any(k.endswith(("_orig", "_mask")) for k in load_state(last))  # a plain model's state dict
    network = load_network(last)
    assert nonzero(network) == TARGET == sum(r.nonzero for r in model_summary(network))
    assert all(int((m.bias != 0).sum()) == m.bias.numel() for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))

    logged = scalars(run_dir, "prune/nonzero")
    # at each epoch's end, after training made the BatchNorm biases non-zero; the budget is met at epoch 2
    assert logged == [RESNET8_PARAMS - 74_800 // 2] * 2 + [TARGET]
    assert scalars(run_dir, "prune/sparsity")[-1] == pytest.approx(1 - TARGET / RESNET8_PARAMS)

    best = run_dir / "checkpoints" / "best.ckpt"
    assert torch.load(best, map_location="cpu", weights_only=False)["epoch"] == 2  # chosen among in-budget epochs only
    assert nonzero(load_network(best)) == TARGET

    # the compact file written at fit end holds the same pruned network as last.ckpt
    compact, kind = load_model(run_dir / "compact_weights.npz")
    assert kind == "float" and nonzero(compact) == TARGET
    for key, value in network.state_dict().items():
        assert torch.equal(compact.state_dict()[key], value), key


def test_resume_mid_run_matches_uninterrupted_and_pruned_weights_stay_zero(full_run, tiny_zip, in_tmp, capsys):
    _, full_dir, full_history = full_run
    config = pruning_config(in_tmp / "prune.yaml", tiny_zip, epochs=3)
    with pytest.warns(UserWarning, match=f"above the target {TARGET:,}"):
        short = run_cli("fit", "--config", config, "--trainer.max_epochs", "1")  # stops mid-cycle
    short_last = Path(short.trainer.logger.log_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(short_last, map_location="cpu", weights_only=False)
    masks = checkpoint["callbacks"]["IterativePruning"]["masks"]
    assert len(masks) == 8  # every conv and linear weight of ResNet-8 (its shortcuts have none)
    early_state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    for name, mask in masks.items():  # an epoch of SGD with momentum and weight decay after the first cycle
        assert torch.all(early_state[name][~mask] == 0) and torch.all(early_state[name][mask] != 0), name

    resumed = run_cli("fit", "--config", config, "--ckpt_path", short_last)  # epoch 1 fine-tunes with the restored masks
    assert pruning_callback(resumed).history == full_history
    resumed_state = load_state(Path(resumed.trainer.logger.log_dir) / "checkpoints" / "last.ckpt")
    full_state = load_state(full_dir / "checkpoints" / "last.ckpt")
    assert resumed_state.keys() == full_state.keys()
    for key, value in full_state.items():
        assert torch.equal(resumed_state[key], value), key
    for name, mask in masks.items():  # pruned in the first cycle: still exactly zero two epochs later
        assert torch.all(full_state["model." + name][~mask] == 0), name
    table = capsys.readouterr().out
    assert "IterativePruning: parameters per layer" in table and f"{TARGET:,}" in table


def test_distillation_prunes_the_student_only(tiny_zip, in_tmp):
    teacher = build_model("resnet8")
    with torch.no_grad():  # BatchNorm biases start at 0: make every teacher parameter non-zero
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.uniform_(0.01, 0.1)
    torch.save(teacher.state_dict(), in_tmp / "teacher.pt")
    module = {
        "class_path": "lit_kd.modules.DistillationModule",
        "init_args": {
            "student": "resnet8",
            "teacher": "resnet8",
            "teacher_ckpt": str(in_tmp / "teacher.pt"),
            "optimizer": SGD,
            "num_example_images": 0,
            "teacher_check_batches": 0,
        },
    }
    target = 15_000  # 73,728 prunable weights without the first conv and the classifier: 50 % twice, then land
    config = pruning_config(
        in_tmp / "kd_prune.yaml",
        tiny_zip,
        epochs=3,
        module=module,
        target_nonzero=target,
        finetune_epochs=1,
        scope="layerwise",
        prune_first_conv=False,
        prune_classifier=False,
    )
    cli = run_cli("fit", "--config", config)
    history = pruning_callback(cli).history
    assert [epoch for epoch, _ in history] == [0, 1, 2]
    assert history[0][1] == nonzero(build_model("resnet8")) - 73_728 // 2  # BatchNorm biases start at 0
    assert history[0][1] > history[1][1] > history[2][1] == target

    for name, value in cli.model.teacher.state_dict().items():
        assert torch.equal(value, teacher.state_dict()[name]), name
    assert nonzero(cli.model.teacher) == nonzero(teacher) == RESNET8_PARAMS

    student = load_network(Path(cli.trainer.logger.log_dir) / "checkpoints" / "last.ckpt")
    assert nonzero(student) == target
    assert int((student.conv1.weight == 0).sum()) == 0 and int((student.linear.weight == 0).sum()) == 0
    densities = [
        float((m.weight != 0).float().mean()) for n, m in student.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"
    ]
    assert max(densities) - min(densities) < 0.01  # layerwise: every pruned layer keeps the same share


@pytest.mark.parametrize(
    ("bad", "good", "options", "message"),
    [
        (RESNET8_PARAMS + 1, RESNET8_PARAMS, {}, f"target_nonzero=75,291 is larger than the network's {RESNET8_PARAMS:,} parameters"),
        (489, 490, {}, "target_nonzero=489 is below the network's 490 parameters that are never pruned"),
        (
            1_561,
            1_562,
            {"prune_first_conv": False, "prune_classifier": False},
            "target_nonzero=1,561 is below the network's 1,562 parameters",
        ),
    ],
)
def test_unreachable_budget_is_a_clear_error(bad, good, options, message):
    with pytest.raises(ValueError, match=message):
        IterativePruning(bad, **options).setup(None, ClassifierModule("resnet8", num_example_images=0), "fit")
    IterativePruning(good, **options).setup(None, ClassifierModule("resnet8", num_example_images=0), "fit")  # the limits are reachable


def test_starts_from_init_ckpt_and_refuses_another_architecture(trained_ckpt, tiny_zip, in_tmp):
    trained = load_network(trained_ckpt)
    cli = run_cli(
        "fit",
        "--config",
        pruning_config(in_tmp / "init.yaml", tiny_zip, epochs=1, init_ckpt=str(trained_ckpt)),
        "--trainer.max_epochs",
        "0",
    )
    for (name, mine), theirs in zip(cli.model.model.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(mine, theirs), name  # no training step yet: exactly the trained weights
    other = pruning_config(in_tmp / "other.yaml", tiny_zip, epochs=1, init_ckpt=str(trained_ckpt))
    config = yaml.safe_load(other.read_text())
    config["model"]["init_args"]["model"] = "resnet20"
    other.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"missing.*layer1.1"):
        run_cli("fit", "--config", other)
