"""DistillationModule: train a student from data and a frozen teacher with a configurable family of loss terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_kd.checkpoints import instantiate_network, load_network, load_weights
from lit_kd.losses import TERMS, DistillationLoss, DistillContext, FeatureTerm, build_term
from lit_kd.models.feature_taps import FeatureTaps
from lit_kd.modules.classifier import ClassifierModule, save_hparams_without_modules, target_classes

TEACHER = "teacher."


def parse_pairs(pairs: Sequence, where: str) -> list[tuple[str, str]]:
    """``[{student: layer1, teacher: layer1}, ...]`` (or ``[[s, t], ...]``) -> ``[("layer1", "layer1"), ...]``."""
    parsed = []
    for pair in pairs or []:
        if isinstance(pair, dict) and set(pair) == {"student", "teacher"}:
            parsed.append((str(pair["student"]), str(pair["teacher"])))
        elif isinstance(pair, (list, tuple)) and len(pair) == 2:
            parsed.append((str(pair[0]), str(pair[1])))
        else:
            raise ValueError(f"{where}: a feature pair is {{student: <module path>, teacher: <module path>}}, got {pair!r}")
    return parsed


def resolve_teacher(teacher, teacher_ckpt: str | None, teacher_kwargs: dict | None, num_classes: int) -> nn.Module | None:
    """The teacher from any of: a lit-kd checkpoint (``teacher_ckpt`` alone), an architecture name plus a
    checkpoint or state-dict file, an ``nn.Module`` (optionally with weights from ``teacher_ckpt``), or nothing."""
    if teacher is None:
        return load_network(teacher_ckpt) if teacher_ckpt else None
    if isinstance(teacher, str) and not teacher_ckpt:
        raise ValueError(
            f"teacher {teacher!r} is given by architecture name only: set teacher_ckpt to its trained weights "
            "(a lit-kd checkpoint or a state-dict file), or pass a trained nn.Module"
        )
    network = instantiate_network(teacher, num_classes, teacher_kwargs)
    return load_weights(network, teacher_ckpt) if teacher_ckpt else network


class DistillationModule(ClassifierModule):
    """Knowledge distillation: the student (``self.model``) learns from labels and a frozen teacher.

    The teacher never trains: ``requires_grad=False``, always in eval mode (``train()`` is overridden), its forward
    under ``torch.no_grad()``, never in the optimizer, never in a checkpoint (``state_dict`` leaves it out). Its
    accuracy on the validation set is logged once at fit start (``teacher/val_acc``), because a wrong teacher
    checkpoint is the most common silent failure. Features are taken by forward hooks on module paths.

    Args:
        student: architecture name or ``nn.Module``; ``student_kwargs`` for named architectures.
        teacher, teacher_ckpt, teacher_kwargs: see :func:`resolve_teacher`; loaded when fitting starts (see
            :meth:`configure_teacher`), so validating, testing and predicting never need the teacher.
        losses: term names (``ce``, ``soft_ce``, ``kl``, ``dkd``, ``feature_mse``, ``cosine``, ``regressor``,
            ``attention``) or dicts ``{name: ..., pairs: [...], <term options>}``.
        feature_pairs: default pairs ``{student: path, teacher: path}`` of the feature terms.
        temperature: for ``soft_ce``, ``kl`` and ``dkd`` unless a term sets its own.
        reduction, weights: see :class:`lit_kd.losses.DistillationLoss` (default: plain mean of all summands).
        teacher_check_batches: validation batches for the teacher check (None: all, 0: skip).
        input_shape: one image's shape, used once to probe feature shapes and build adapters.
    """

    def __init__(
        self,
        student: str | nn.Module = "resnet20",
        teacher: str | nn.Module | None = None,
        teacher_ckpt: str | None = None,
        student_kwargs: dict | None = None,
        teacher_kwargs: dict | None = None,
        losses: Sequence[str | dict] = ("ce", "soft_ce"),
        feature_pairs: Sequence[dict] = (),
        temperature: float = 4.0,
        reduction: str = "mean",
        weights: dict[str, float] | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
        num_example_images: int = 10,
        teacher_check_batches: int | None = None,
        input_shape: tuple[int, int, int] = (3, 32, 32),
    ):
        super().__init__(
            student, num_classes, student_kwargs, optimizer, lr_scheduler, scheduler_interval, label_smoothing, num_example_images
        )
        save_hparams_without_modules(self, "student", "teacher")
        self._teacher_source = (teacher, teacher_ckpt, teacher_kwargs)
        self.teacher: nn.Module | None = None
        self.criterion: DistillationLoss | None = None
        self._taps: list[FeatureTaps] = []
        self.teacher_val_acc: float | None = None  # measured by check_teacher when fitting starts
        if isinstance(teacher, nn.Module):  # a teacher held in memory is there from the start
            self.configure_teacher()

    def configure_teacher(self) -> None:
        """Load and freeze the teacher, build the loss terms and their adapters (done once, at ``setup("fit")``).

        Deferred to fit so that validating, testing or predicting with a distilled checkpoint never needs the
        teacher; ``setup`` runs before a checkpoint is restored and before the optimizer exists, so resumed runs
        find their adapters and the optimizer sees them.
        """
        if self.criterion is not None:
            return
        teacher = resolve_teacher(*self._teacher_source, self.hparams.num_classes)
        if teacher is None:
            raise ValueError("DistillationModule needs a teacher to fit: set teacher_ckpt (and/or teacher)")
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()
        default_pairs = parse_pairs(self.hparams.feature_pairs, "feature_pairs")
        terms = [self._build_term(spec, default_pairs) for spec in self.hparams.losses]
        criterion = DistillationLoss(terms, self.hparams.reduction, self.hparams.weights)
        criterion.build(*self._probe_feature_shapes(criterion.feature_pairs, tuple(self.hparams.input_shape)))
        self.criterion = criterion.to(self.device)
        self.teacher.to(self.device)

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.configure_teacher()

    def _build_term(self, spec: str | dict, default_pairs):
        options = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = options.pop("name", None)
        if name not in TERMS:
            raise ValueError(f"unknown loss term {name!r} in losses; available: {sorted(TERMS)}")
        if issubclass(TERMS[name], FeatureTerm):
            options["pairs"] = parse_pairs(options.get("pairs"), f"loss {name!r}") or default_pairs
        elif name in ("soft_ce", "kl", "dkd"):
            options.setdefault("temperature", self.hparams.temperature)
        elif name == "ce":
            options.setdefault("label_smoothing", self.hparams.label_smoothing)
        return build_term(name, **options)

    def _probe_feature_shapes(self, pairs, input_shape):
        """Run one dummy image through student and teacher (eval mode, no grad) to learn each hooked feature's shape."""
        if not pairs:
            return {}, {}
        was_training = self.model.training
        # on the student's device, not self.device: Lightning sets self.device to the accelerator before setup() but
        # moves the parameters only after it; the freshly loaded teacher follows the student for this one probe
        device = next(self.model.parameters()).device
        self.teacher.to(device)
        x = torch.zeros(1, *input_shape, device=device)
        with FeatureTaps(self.model, [s for s, _ in pairs]) as s_taps, FeatureTaps(self.teacher, [t for _, t in pairs]) as t_taps:
            with torch.no_grad():
                self.model.eval()(x)
                self.teacher(x)
            shapes = (
                {k: tuple(v.shape[1:]) for k, v in s_taps.features.items()},
                {k: tuple(v.shape[1:]) for k, v in t_taps.features.items()},
            )
        self.model.train(was_training)
        return shapes

    # -- the teacher stays frozen and out of checkpoints ------------------------------------------------------

    @override
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @override
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in state if k.startswith(prefix + TEACHER)]:
            del state[key]
        return state

    @override
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state = {k: v for k, v in state_dict.items() if not k.startswith(TEACHER)}
        if self.teacher is not None:
            state.update({TEACHER + k: v for k, v in self.teacher.state_dict().items()})
        if self.criterion is None:  # student only: the trained adapters of the loss terms are not needed
            state = {k: v for k, v in state.items() if not k.startswith("criterion.")}
        return super().load_state_dict(state, strict=strict, assign=assign)

    def trainable_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith(TEACHER)]

    # -- training --------------------------------------------------------------------------------------------------

    @override
    def on_fit_start(self) -> None:
        pairs = self.criterion.feature_pairs
        if pairs:
            self._taps = [FeatureTaps(self.model, [s for s, _ in pairs]), FeatureTaps(self.teacher, [t for _, t in pairs])]
        if self.hparams.teacher_check_batches != 0:
            self.check_teacher()

    @override
    def on_fit_end(self) -> None:
        self.remove_feature_hooks()

    @override
    def teardown(self, stage: str) -> None:
        self.remove_feature_hooks()

    def remove_feature_hooks(self) -> None:
        for taps in self._taps:
            taps.remove()
        self._taps = []

    @torch.no_grad()
    def check_teacher(self) -> float | None:
        """Log the teacher's accuracy on the validation set (``teacher/val_acc``), keep it as ``teacher_val_acc`` and
        return it."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            rank_zero_info("teacher accuracy not checked: no datamodule")
            return None
        metric = MulticlassAccuracy(self.hparams.num_classes, average="micro").to(self.device)
        limit = self.hparams.teacher_check_batches
        for i, batch in enumerate(datamodule.val_dataloader()):
            if limit is not None and i >= limit:
                break
            images, target = datamodule.on_after_batch_transfer(move_data_to_device(batch, self.device), 0)
            with self.trainer.precision_plugin.forward_context():
                metric.update(self.teacher(images), target_classes(target))
        accuracy = self.teacher_val_acc = metric.compute().item()
        for logger in self.loggers:
            logger.log_metrics({"teacher/val_acc": accuracy}, step=self.global_step)
        rank_zero_info(f"teacher accuracy on the validation set: {accuracy:.4f}")
        return accuracy

    @override
    def training_step(self, batch, batch_idx: int):
        images, target = batch
        for taps in self._taps:
            taps.clear()
        student_logits = self.model(images)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        s_features, t_features = (self._taps[0].features, self._taps[1].features) if self._taps else ({}, {})
        total, summands = self.criterion(DistillContext(student_logits, teacher_logits, target, s_features, t_features))
        n = len(images)
        self.log("train/loss", total, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        for name, value in summands.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=n)
        self.metrics["train_acc"](student_logits, target_classes(target))
        self.log("train/acc", self.metrics["train_acc"], on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return total
