"""Device placement: what a LightningModule builds before Lightning moves it to the accelerator lands where the
student is; the CUDA tests run where torch sees a GPU (marker ``cuda``) and are not collected elsewhere."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_kd.data import CIFAR10DataModule
from lit_kd.models import build_model
from lit_kd.modules import DistillationModule
from lit_kd.quant.torch_qat import OnCpu

PAIRS = [{"student": "layer1", "teacher": "layer1"}, {"student": "layer3", "teacher": "layer3"}]


@pytest.fixture
def teacher_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(build_model("resnet20").state_dict(), path)
    return str(path)


def feature_distiller(teacher_weights: str) -> DistillationModule:
    return DistillationModule(
        student="resnet20_trunc",
        teacher="resnet20",
        teacher_ckpt=teacher_weights,
        losses=["ce", "soft_ce", "feature_mse"],
        feature_pairs=PAIRS,
        num_example_images=0,
    )


def test_setup_probes_features_on_the_students_device_when_the_module_reports_another(teacher_weights):
    """Lightning sets ``self.device`` to the accelerator before ``setup`` and moves the parameters after it (the
    CUDA failure of feature distillation). A module that reports ``meta`` while its student sits on the CPU must
    still probe the feature shapes; the loss terms then follow ``self.device``."""
    module = feature_distiller(teacher_weights)
    module._device = torch.device("meta")
    module.setup("fit")
    assert module.criterion is not None
    assert set(module.criterion.feature_pairs) == {("layer1", "layer1"), ("layer3", "layer3")}
    assert all(p.device.type == "cpu" for p in module.model.parameters())  # the student stays until Lightning moves it


def test_without_the_fix_the_probe_input_would_be_on_the_reported_device(teacher_weights):
    """The failure mode itself: a student on the CPU called with an input on another device raises (so the test
    above can fail)."""
    student = build_model("resnet20_trunc").eval()
    with pytest.raises((RuntimeError, NotImplementedError)):
        student(torch.zeros(1, 3, 32, 32, device="meta"))


def test_int8_model_on_cpu_serves_batches_from_another_device():
    int8 = torch.nn.Linear(4, 2)
    wrapped = OnCpu(int8)
    wrapped.to("meta")  # moving the wrapper leaves the CPU module where it is
    assert int8.weight.device.type == "cpu"
    out = wrapped(torch.ones(3, 4))
    assert out.shape == (3, 2) and torch.equal(out, int8(torch.ones(3, 4)))


class Placement(L.Callback):
    """The device types of the student's, the teacher's and the loss terms' tensors at every training step (Lightning
    moves the module back to the CPU when fit ends, so placement is read while it trains)."""

    def __init__(self):
        self.seen: set[tuple[str, str]] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for part in ("model", "teacher", "criterion"):
            self.seen |= {(part, t.device.type) for t in [*getattr(pl_module, part).parameters(), *getattr(pl_module, part).buffers()]}
        self.seen.add(("loss", outputs["loss"].device.type))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_feature_distillation_trains_on_cuda(tiny_zip, teacher_weights, precision):
    L.seed_everything(0)
    module = feature_distiller(teacher_weights)
    placement = Placement()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[placement],
    )
    trainer.fit(module, CIFAR10DataModule(data_dir=str(tiny_zip), batch_size=16, channels_last=True))
    assert trainer.global_step == 3
    assert {device for _, device in placement.seen} == {"cuda"}, placement.seen
    assert {part for part, _ in placement.seen} >= {"model", "teacher", "loss"}
    torch.manual_seed(0)
    reference = build_model("resnet20").state_dict()
    for key, value in module.teacher.state_dict().items():  # the frozen teacher did not move
        assert torch.equal(value.cpu(), reference[key]), key
