"""ClassifierModule: cross-entropy training of any image classifier (teacher fine-tune, student on data only)."""

from __future__ import annotations

import inspect
import warnings

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_kd.models import build_model


def resolve_model(model: str | nn.Module, num_classes: int, model_kwargs: dict | None) -> nn.Module:
    """A registered architecture name (built with ``model_kwargs``) or an ``nn.Module`` used as is."""
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError("model_kwargs only apply when the model is given by name, not as an nn.Module")
        return model
    if isinstance(model, str):
        return build_model(model, num_classes=num_classes, **(model_kwargs or {}))
    raise TypeError(f"model must be an architecture name or an nn.Module, got {type(model).__name__}")


def save_hparams_without_modules(module: L.LightningModule, *names: str) -> None:
    """``save_hyperparameters()``, minus the arguments in ``names`` that were passed as ``nn.Module`` objects.

    Under LightningCLI those arguments are recorded as their ``class_path`` config (so ``load_from_checkpoint``
    can rebuild them); a module object handed over in Python is not pickled into the checkpoint's hyperparameters
    (its weights are in the state dict anyway).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
        module.save_hyperparameters(frame=inspect.currentframe().f_back)
    for name in names:
        if isinstance(module.hparams.get(name), nn.Module):
            del module.hparams[name]


def target_classes(target: torch.Tensor) -> torch.Tensor:
    """Class indices from hard labels (N,) or class probabilities (N, C), e.g. mixup targets."""
    return target.argmax(dim=1) if target.ndim == 2 else target


class ClassifierModule(L.LightningModule):
    """Train ``model`` with cross-entropy; log ``{train,val,test}/{loss,acc}`` and a figure of example predictions.

    Args:
        model: an architecture name from ``lit_kd.models.MODELS`` or any ``nn.Module`` (``class_path`` in YAML).
        num_classes: classifier outputs (for models built by name).
        model_kwargs: extra arguments of the named architecture (``weights``, ``stem``, ``shortcut`` ...).
        optimizer: any torch optimizer; default Adam(lr=1e-3), the study protocol.
        lr_scheduler: any torch LR scheduler, stepped every epoch or, with ``scheduler_interval="step"``, every step.
        label_smoothing: passed to ``torch.nn.functional.cross_entropy``.
        num_example_images: example test images drawn with predicted and true labels after each validation.
        compile: compile the network's forward with ``torch.compile`` (``nn.Module.compile``: parameter names and
            checkpoints stay those of the plain network, so resuming and loading are unchanged).
        hflip_tta: also log ``{val,test}/acc_hflip``, the accuracy of the mean logits of each image and its mirror
            image (flip test-time augmentation, one more forward pass); ``{val,test}/acc`` stay single-view.
    """

    def __init__(
        self,
        model: str | nn.Module = "resnet20",
        num_classes: int = 10,
        model_kwargs: dict | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        num_example_images: int = 10,
        compile: bool = False,
        hflip_tta: bool = False,
    ):
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if type(self) is ClassifierModule:  # subclasses record their own arguments
            save_hparams_without_modules(self, "model")
        self.model = resolve_model(model, num_classes, model_kwargs)
        if compile:
            self.model.compile()
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.metrics = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in ("train", "val", "test")}
        )
        if hflip_tta:
            for stage in ("val", "test"):
                self.metrics[f"{stage}_acc_hflip"] = MulticlassAccuracy(num_classes, average="micro")

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)

    def _shared_step(self, batch, stage: str):
        images, target = batch
        logits = self(images)
        loss = self.loss(logits, target)
        metric = self.metrics[f"{stage}_acc"]
        metric(logits, target_classes(target))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(images))
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images))
        if f"{stage}_acc_hflip" in self.metrics:
            flipped = self.metrics[f"{stage}_acc_hflip"]
            flipped((logits + self(images.flip(-1))) / 2, target_classes(target))
            self.log(f"{stage}/acc_hflip", flipped, on_step=False, on_epoch=True, batch_size=len(images))
        return loss, logits

    @override
    def training_step(self, batch, batch_idx: int):
        return self._shared_step(batch, "train")[0]

    @override
    def validation_step(self, batch, batch_idx: int):
        return self._shared_step(batch, "val")[1]

    @override
    def test_step(self, batch, batch_idx: int):
        return self._shared_step(batch, "test")[1]

    @override
    def predict_step(self, batch, batch_idx: int):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).argmax(dim=1)

    def trainable_parameters(self):
        """What the optimizer updates (subclasses leave out frozen parts such as a teacher)."""
        return self.parameters()

    @override
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}

    @override
    def configure_callbacks(self):
        from lit_kd.modules.sample_predictions import SamplePredictions

        return [SamplePredictions(self.hparams.num_example_images)] if self.hparams.num_example_images else []
