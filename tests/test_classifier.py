"""ClassifierModule and AtomicCheckpointIO: loss formula, mixup targets, hyperparameters, atomic writes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn

from lit_kd.checkpoints import AtomicCheckpointIO
from lit_kd.modules import ClassifierModule
from lit_kd.modules.classifier import target_classes


def test_loss_is_cross_entropy_with_label_smoothing():
    module = ClassifierModule("resnet20", label_smoothing=0.1)
    logits, target = torch.randn(8, 10), torch.randint(0, 10, (8,))
    smooth = torch.full((8, 10), 0.1 / 10).scatter_add(1, target[:, None], torch.full((8, 1), 0.9))
    reference = -(smooth * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(module.loss(logits, target), reference, atol=1e-6)


def test_soft_targets_from_mixup():
    module = ClassifierModule("resnet20")
    logits = torch.randn(4, 10)
    probs = torch.softmax(torch.randn(4, 10), 1)
    assert torch.allclose(module.loss(logits, probs), -(probs * logits.log_softmax(1)).sum(1).mean(), atol=1e-6)
    assert torch.equal(target_classes(probs), probs.argmax(1))


def test_python_nn_module_is_not_pickled_into_hparams():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    module = ClassifierModule(net)
    assert "model" not in module.hparams and module.model is net
    assert ClassifierModule("resnet20").hparams.model == "resnet20"
    with pytest.raises(ValueError, match=r"model_kwargs only apply"):
        ClassifierModule(net, model_kwargs={"shortcut": "B"})
    with pytest.raises(TypeError, match=r"architecture name or an nn\.Module"):
        ClassifierModule(42)
    with pytest.raises(ValueError, match=r"scheduler_interval"):
        ClassifierModule("resnet20", scheduler_interval="batch")


def test_optimizer_and_scheduler_factories():
    module = ClassifierModule(
        "resnet20",
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1),
        scheduler_interval="step",
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD) and config["lr_scheduler"]["interval"] == "step"
    assert isinstance(ClassifierModule("resnet20").configure_optimizers(), torch.optim.Adam)  # the study default


def test_atomic_checkpoint_keeps_old_file_when_saving_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    assert torch.load(path)["step"] == 1

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_atomic_checkpoint_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    """The data reaches the disk before the new name points at it (then the directory entry is synced too)."""
    import os

    import lit_kd.atomic as atomic

    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append("fsync") or fsync(fd))
    monkeypatch.setattr(
        atomic.os, "replace", lambda src, dst: calls.append(("replace", Path(src).name, Path(dst).name)) or replace(src, dst)
    )
    AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert calls == ["fsync", ("replace", f".last.ckpt.tmp{os.getpid()}", "last.ckpt"), "fsync"]
    assert torch.load(tmp_path / "last.ckpt")["step"] == 1


def test_hflip_tta_logs_the_accuracy_of_mean_logits_over_the_mirror_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    images = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        single, mirrored = net(images), net(images.flip(-1))
    target = ((single + mirrored) / 2).argmax(1)  # every image right with the mirror image, not all without it
    module = ClassifierModule(net, num_example_images=0, hflip_tta=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, target), batch_size=16)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (metrics,) = trainer.test(module, loader, verbose=False)
    assert metrics["test/acc_hflip"] == 1.0
    assert metrics["test/acc"] == pytest.approx((single.argmax(1) == target).float().mean().item()) and metrics["test/acc"] < 0.95
    assert (
        "test/acc_hflip"
        not in L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
            ClassifierModule(net, num_example_images=0), loader, verbose=False
        )[0]
    )
