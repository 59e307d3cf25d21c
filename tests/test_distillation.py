"""DistillationModule: frozen teacher, hooks on foreign models, checkpoints without the teacher, every config via CLI."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn
import torchvision
from torchmetrics.classification import MulticlassAccuracy

from lit_kd.data import CIFAR10DataModule
from lit_kd.models import FeatureTaps
from lit_kd.modules import ClassifierModule, DistillationModule, load_network
from tests.conftest import REPO
from tests.helpers import read_events, run_cli, scalars

EXPERIMENTS = REPO / "experiments"
# the standalone distillation configs (resnet101/, kd_variants/, resnet50_to_resnet18/), which name their teacher;
# the CPU study's cifar_cpu/kd_*.yaml get theirs from the study (teacher_ckpt: null)
DISTILL_CONFIGS = sorted(p for p in EXPERIMENTS.glob("*/*.yaml") if p.parent.name != "cifar_cpu" and p.name.startswith(("distill_", "kd_")))


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    return L.Trainer(**(defaults | kwargs))


@pytest.fixture(scope="session")
def teacher_ckpts(tiny_zip, tmp_path_factory) -> dict[str, str]:
    """lit-kd checkpoints of briefly trained teachers, as the teacher stage would leave them."""
    root, paths = tmp_path_factory.mktemp("teachers"), {}
    for arch in ("resnet18", "resnet20", "resnet50", "resnet101"):
        L.seed_everything(0)
        trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
        trainer.fit(ClassifierModule(arch, num_example_images=0), CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=8))
        paths[arch] = str(root / f"{arch}.ckpt")
        trainer.save_checkpoint(paths[arch], weights_only=True)
    return paths


class TeacherWatch(L.Callback):
    """Records whether the teacher was in training mode at every hook where Lightning toggles modes."""

    def __init__(self):
        self.modes = []

    def _record(self, trainer, pl_module, *args, **kwargs):
        self.modes.append(pl_module.teacher.training)

    on_train_batch_start = on_train_batch_end = on_validation_start = on_validation_end = on_train_epoch_start = _record


def test_teacher_is_frozen_bit_identical_and_always_in_eval(tiny_zip, teacher_ckpts):
    L.seed_everything(0)
    module = DistillationModule(
        student="resnet20",
        teacher_ckpt=teacher_ckpts["resnet18"],
        losses=["ce", "soft_ce", "attention"],
        feature_pairs=[{"student": "layer3", "teacher": "layer3"}],
        num_example_images=0,
    )
    module.configure_teacher()
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    watch = TeacherWatch()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[watch])
    trainer.fit(module, CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=16))
    after = module.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm running statistics
    assert any("running_mean" in k for k in before)
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert not any(torch.equal(student_before[k], v) for k, v in module.model.state_dict().items() if k.endswith("conv1.weight"))
    assert watch.modes and not any(watch.modes)
    module.train()
    assert module.model.training and not module.teacher.training
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimizer_params & {id(p) for p in module.teacher.parameters()}
    assert optimizer_params == {id(p) for p in module.model.parameters()}  # attention has no trainable part


def test_hooks_on_a_plain_torchvision_model_are_removed_after_fit(tiny_zip):
    teacher = torchvision.models.resnet18(num_classes=10).eval()  # a model we did not write, ImageNet stem included
    student = torchvision.models.resnet18(num_classes=10)
    with FeatureTaps(teacher, ["layer2", "layer4.1.conv2"]) as taps:
        teacher(torch.zeros(2, 3, 64, 64))
        assert taps.features["layer2"].shape == (2, 128, 8, 8) and taps.features["layer4.1.conv2"].shape == (2, 512, 2, 2)
    assert not teacher.layer2._forward_hooks and not teacher.layer4[1].conv2._forward_hooks

    module = DistillationModule(
        student=student,
        teacher=teacher,
        losses=["ce", "feature_mse"],
        num_example_images=0,
        feature_pairs=[{"student": "layer1", "teacher": "layer1"}, {"student": "layer4.1", "teacher": "layer4.1"}],
    )
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=8))
    assert trainer.callback_metrics["train/loss_feature_mse_layer4.1"] > 0
    for model in (teacher, student):
        assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"ResNet has no module 'layer9': 'layer9' is not among \['avgpool', 'bn1'"):
        teacher_of(student=student, teacher=teacher, losses=["cosine"], feature_pairs=[["layer9", "layer1"]])


def test_shape_mismatch_without_adapter_is_a_clear_error(teacher_ckpts):
    module = DistillationModule(
        student="resnet20",
        teacher_ckpt=teacher_ckpts["resnet18"],
        losses=["ce", "feature_mse"],
        feature_pairs=[{"student": "layer1", "teacher": "layer1"}],
    )
    with pytest.raises(ValueError, match=r"student 'layer1' \(16, 32, 32\) vs teacher 'layer1' \(64, 32, 32\).*regressor"):
        module.configure_teacher()


def teacher_of(**kwargs) -> nn.Module:
    module = DistillationModule(**kwargs)
    module.configure_teacher()
    return module.teacher


def test_teacher_sources(teacher_ckpts, tmp_path):
    from_ckpt = teacher_of(teacher_ckpt=teacher_ckpts["resnet18"])
    state_file = tmp_path / "teacher_state.pt"
    torch.save(from_ckpt.state_dict(), state_file)
    by_name = teacher_of(teacher="resnet18", teacher_ckpt=str(state_file))
    assert all(torch.equal(a, b) for a, b in zip(from_ckpt.state_dict().values(), by_name.state_dict().values()))
    in_memory = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    assert DistillationModule(teacher=in_memory).teacher is in_memory
    with pytest.raises(ValueError, match=r"given by architecture name only: set teacher_ckpt"):
        teacher_of(teacher="resnet18")
    with pytest.raises(ValueError, match=r"does not fit ResNet.*another architecture"):
        teacher_of(teacher="resnet50", teacher_ckpt=teacher_ckpts["resnet18"])
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        teacher_of(teacher_ckpt=str(tmp_path / "missing.ckpt"))


def test_distilled_checkpoint_has_no_teacher_and_tests_without_it(tiny_zip, teacher_ckpts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = EXPERIMENTS / "kd_variants" / "kd_regressor.yaml"
    run_cli(
        "fit",
        "--config",
        config,
        "--model.teacher_ckpt",
        teacher_ckpts["resnet18"],
        "--data.data_dir",
        tiny_zip,
        "--data.batch_size",
        "16",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "4",
    )
    run_dir = tmp_path / "lightning_logs" / "kd_regressor" / "version_0"
    best = run_dir / "checkpoints" / "best.ckpt"
    state = torch.load(best, weights_only=False)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state)
    assert any(k.startswith("criterion.terms.1.regressors.0") for k in state)  # the trained regressor is kept
    events = read_events(run_dir)
    assert {"train/loss_ce", "train/loss_regressor_layer1", "train/loss_regressor_layer3", "teacher/val_acc"} <= set(
        events.Tags()["scalars"]
    )
    best_val = max(scalars(run_dir, "val/acc"))

    # the teacher check logs exactly the teacher's accuracy on the validation (here: test) set
    teacher = load_network(teacher_ckpts["resnet18"])
    dm = CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=60)
    dm.setup("test")
    metric = MulticlassAccuracy(10, average="micro")
    for batch in dm.val_dataloader():
        images, labels = dm.on_after_batch_transfer(batch, 0)
        metric.update(teacher(images), labels)
    assert scalars(run_dir, "teacher/val_acc") == [pytest.approx(metric.compute().item())]

    Path(teacher_ckpts["resnet18"]).rename(tmp_path / "teacher-moved-away.ckpt")  # testing must not need the teacher
    try:
        tested = run_cli("test", "--config", run_dir / "config.yaml", "--ckpt_path", best)
    finally:
        (tmp_path / "teacher-moved-away.ckpt").rename(teacher_ckpts["resnet18"])
    assert tested.model.teacher is None
    assert tested.trainer.callback_metrics["test/acc"].item() == pytest.approx(best_val, abs=1e-6)
    student = load_network(best)  # later stages: the student alone, no Lightning, no teacher
    assert type(student).__name__ == "CifarResNet" and not student.training
    with pytest.raises(ValueError, match=r"needs a teacher to fit"):
        quiet_trainer(max_steps=1).fit(DistillationModule(), dm)


@pytest.mark.parametrize("config", DISTILL_CONFIGS, ids=lambda p: p.relative_to(EXPERIMENTS).as_posix())
def test_every_distillation_config_fits_through_the_cli(config, tiny_zip, teacher_ckpts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = re.search(r"teacher_(resnet\d+)", config.read_text())
    arch = named.group(1) if named else "resnet20"  # cifar_heldout: the study sets its ResNet-20 teacher
    cli = run_cli(
        "fit",
        "--config",
        config,
        "--model.teacher_ckpt",
        teacher_ckpts[arch],
        "--data.data_dir",
        tiny_zip,
        "--data.batch_size",
        "8",
        "--data.eval_batch_size",
        "30",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--model.teacher_check_batches",
        "1",
        *(["--data.val_split", "60"] if "val_split: 5000" in config.read_text() else []),  # the fixture has 240 training images
    )
    metrics = cli.trainer.callback_metrics
    names = [k.removeprefix("train/loss_") for k in metrics if k.startswith("train/loss_")]
    assert "ce" in names and len(names) >= 2, names
    summands = torch.stack([metrics[f"train/loss_{n}"] for n in names])
    assert torch.isfinite(summands).all()
    if cli.model.criterion.reduction == "mean":  # epoch means of a per-batch mean: the plain average again
        assert metrics["train/loss"].item() == pytest.approx(summands.mean().item(), rel=1e-4)
    assert (tmp_path / "lightning_logs" / config.stem / "version_0" / "checkpoints" / "last.ckpt").is_file()
