"""Distillation loss terms, each a small named ``nn.Module``, and their combination.

Every term maps a :class:`DistillContext` (student and teacher logits, targets, hooked features) to a dict of named
summands: logit terms give one (``soft_ce``), feature terms one per feature pair (``feature_mse_layer1``).
:class:`DistillationLoss` reduces all summands of all terms either to their plain mean (the default, the ResNet-101
study's "plain average of all terms") or to a weighted sum with weights named by term or by summand.

Feature pairs are ``(student_path, teacher_path)`` module paths; "teacher block N to student block N-1" is just a
choice of pairs. Terms that compare raw features (``feature_mse``) need equal shapes; ``cosine`` and ``attention``
bring features to a common size without parameters; ``regressor`` learns a conv adapter (FitNets).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

Shape = tuple[int, ...]  # feature shape without the batch dimension
Pair = tuple[str, str]  # (student module path, teacher module path)


TERMS: dict[str, type[LossTerm]] = {}  # loss term name -> class, filled by LossTerm.__init_subclass__


@dataclass
class DistillContext:
    student_logits: Tensor
    teacher_logits: Tensor
    target: Tensor  # class indices (N,) or class probabilities (N, C), e.g. after mixup
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)


def target_probabilities(target: Tensor, num_classes: int) -> Tensor:
    return target if target.ndim == 2 else F.one_hot(target, num_classes).to(torch.float32)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_temperature(term: str, temperature) -> float:
    """A softmax temperature: a finite number > 0 (0 divides the logits by zero: NaN losses)."""
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{term} temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


class LossTerm(nn.Module):
    """A named loss term; ``forward(ctx)`` returns ``{summand name: scalar}``. A subclass that sets ``name`` is
    registered under it in :data:`TERMS` (usable in ``losses:`` of a config) by being defined."""

    name: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            known = TERMS.get(name)
            if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
                raise TypeError(f"loss term name {name!r} of {cls.__qualname__} is taken by {known.__module__}.{known.__qualname__}")
            TERMS[name] = cls

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        raise NotImplementedError


class CrossEntropy(LossTerm):
    """``ce``: cross-entropy of the student with the labels (hard labels, or mixup's class probabilities)."""

    name = "ce"

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"ce label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        return {self.name: F.cross_entropy(ctx.student_logits, ctx.target, label_smoothing=self.label_smoothing)}


class SoftCrossEntropy(LossTerm):
    """``soft_ce``: Hinton et al.'s soft-target loss, ``T^2 * mean_n( -sum_c p_t(c) log p_s(c) )`` with
    ``p = softmax(logits / T)``.

    This is the cross-entropy H(p_t, p_s), not the KL divergence: KL(p_t || p_s) = H(p_t, p_s) - H(p_t). The
    two differ by the teacher's entropy, which does not depend on the student, so their gradients are identical;
    the cross-entropy's minimum (student equals teacher) is ``T^2 * H(p_t)`` rather than 0. Scaled by T^2 so the
    gradient magnitude does not shrink as T grows.
    """

    name = "soft_ce"

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = check_temperature(self.name, temperature)

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        t = self.temperature
        p_teacher = F.softmax(ctx.teacher_logits.float() / t, dim=1)
        log_p_student = F.log_softmax(ctx.student_logits.float() / t, dim=1)
        return {self.name: -(p_teacher * log_p_student).sum(dim=1).mean() * t * t}


class KLDivergence(SoftCrossEntropy):
    """``kl``: ``T^2 * KL(p_t || p_s)``, batch mean; zero when student equals teacher (see :class:`SoftCrossEntropy`)."""

    name = "kl"

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        t = self.temperature
        log_p_teacher = F.log_softmax(ctx.teacher_logits.float() / t, dim=1)
        log_p_student = F.log_softmax(ctx.student_logits.float() / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return {self.name: kl * t * t}


class DecoupledKD(LossTerm):
    """``dkd``: decoupled knowledge distillation (Zhao et al., CVPR 2022), ``alpha * TCKD + beta * NCKD``.

    TCKD is the T^2-scaled KL between the binary (target, all others) distributions of teacher and student; NCKD the
    T^2-scaled KL between their distributions over the non-target classes only. With mixup targets the target class
    is the most probable one.
    """

    name = "dkd"

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0):
        super().__init__()
        for what, value in (("alpha", alpha), ("beta", beta)):
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"dkd {what} must be a finite number >= 0, got {value!r}")
        self.temperature, self.alpha, self.beta = check_temperature(self.name, temperature), alpha, beta

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        t = self.temperature
        s, te = ctx.student_logits.float() / t, ctx.teacher_logits.float() / t
        gt = F.one_hot(ctx.target.argmax(1) if ctx.target.ndim == 2 else ctx.target, s.shape[1]).bool()
        p_s, p_t = F.softmax(s, dim=1), F.softmax(te, dim=1)
        binary_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
        binary_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-12)
        tckd = F.kl_div(binary_s.log(), binary_t, reduction="batchmean") * t * t
        masked = torch.finfo(s.dtype).min
        log_q_s = F.log_softmax(s.masked_fill(gt, masked), dim=1)
        log_q_t = F.log_softmax(te.masked_fill(gt, masked), dim=1)
        nckd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(gt, 0).sum(1).mean() * t * t
        return {self.name: self.alpha * tckd + self.beta * nckd}


# ----------------------------------------------------------------------------------------------------------------
# Feature terms
# ----------------------------------------------------------------------------------------------------------------


def _as_4d(x: Tensor) -> Tensor:
    return x if x.ndim == 4 else x.reshape(x.shape[0], -1, 1, 1)


def _pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def _common_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return _pool_to(a, size), _pool_to(b, size)


def pool_channels(x: Tensor, channels: int) -> Tensor:
    """Parameter-free channel reduction: average groups of adjacent channels down to ``channels``."""
    if x.shape[1] == channels:
        return x
    n, c, h, w = x.shape
    pooled = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(n * h * w, 1, c), channels)
    return pooled.reshape(n, h, w, channels).permute(0, 3, 1, 2)


class FeatureTerm(LossTerm):
    """A term over feature pairs: one summand per pair, named ``<term>_<student path>`` (plus ``_to_<teacher path>``
    when the paths differ). :meth:`build` checks shapes (and creates adapters) once both are known."""

    def __init__(self, pairs: Sequence[Pair]):
        super().__init__()
        if not pairs:
            raise ValueError(f"loss term {self.name!r} compares features and needs feature pairs (student: ..., teacher: ...)")
        for p in pairs:
            if isinstance(p, str) or len(p) != 2 or not all(isinstance(path, str) and path for path in p):
                raise ValueError(f"loss term {self.name!r}: a feature pair is (student module path, teacher module path), got {p!r}")
        self.pairs = [tuple(p) for p in pairs]

    def summand(self, pair: Pair) -> str:
        s, t = pair
        return f"{self.name}_{s}" if s == t else f"{self.name}_{s}_to_{t}"

    def build(self, student_shapes: dict[str, Shape], teacher_shapes: dict[str, Shape]) -> None:
        for pair in self.pairs:
            self.check(pair, student_shapes[pair[0]], teacher_shapes[pair[1]])

    def check(self, pair: Pair, student: Shape, teacher: Shape) -> None:
        """Raise a clear error when this term cannot compare features of these shapes."""

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, ctx: DistillContext) -> dict[str, Tensor]:
        return {
            self.summand(pair): self.pair_loss(i, ctx.student_features[pair[0]], ctx.teacher_features[pair[1]])
            for i, pair in enumerate(self.pairs)
        }


class FeatureMSE(FeatureTerm):
    """``feature_mse``: mean squared error between paired feature maps of identical shape."""

    name = "feature_mse"

    def check(self, pair: Pair, student: Shape, teacher: Shape) -> None:
        if student != teacher:
            raise ValueError(
                f"feature_mse pair student {pair[0]!r} {tuple(student)} vs teacher {pair[1]!r} {tuple(teacher)}: shapes "
                "differ. Use an adapter: the 'regressor' term (a trainable conv to the teacher's shape) or the "
                "'cosine' / 'attention' terms (parameter-free pooling)"
            )

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor) -> Tensor:
        return F.mse_loss(student.float(), teacher.float())


class CosineFeatureLoss(FeatureTerm):
    """``cosine``: ``1 - cos(student, teacher)`` per image, batch mean, after bringing both features to a common
    shape without trainable parameters: adaptive average pooling to the smaller spatial size, then averaging groups
    of adjacent channels of the wider one down to the narrower width."""

    name = "cosine"

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor) -> Tensor:
        s, t = _common_spatial(_as_4d(student.float()), _as_4d(teacher.float()))
        channels = min(s.shape[1], t.shape[1])
        s, t = pool_channels(s, channels), pool_channels(t, channels)
        return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()


class RegressorMSE(FeatureTerm):
    """``regressor`` (FitNets, Romero et al. 2015): a trainable conv (``kernel_size`` 1 or 3) maps the student's
    features to the teacher's channel count, then MSE against the teacher's features (the larger spatial size is
    average-pooled to the smaller). The regressors are trained with the student and saved in its checkpoint."""

    name = "regressor"

    def __init__(self, pairs: Sequence[Pair], kernel_size: int = 1):
        super().__init__(pairs)
        if kernel_size not in (1, 3):
            raise ValueError(f"regressor kernel_size must be 1 or 3, got {kernel_size}")
        self.kernel_size = kernel_size
        self.regressors = nn.ModuleList()

    def build(self, student_shapes: dict[str, Shape], teacher_shapes: dict[str, Shape]) -> None:
        self.regressors = nn.ModuleList()
        for s, t in self.pairs:
            cs, ct = student_shapes[s][0], teacher_shapes[t][0]
            conv = nn.Conv2d(cs, ct, self.kernel_size, padding=self.kernel_size // 2, bias=False)
            self.regressors.append(nn.Sequential(conv, nn.BatchNorm2d(ct)))

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor) -> Tensor:
        s, t = _common_spatial(_as_4d(student), _as_4d(teacher))
        return F.mse_loss(self.regressors[index](s).float(), t.float())


class AttentionTransfer(FeatureTerm):
    """``attention`` (Zagoruyko & Komodakis, 2017): spatial attention maps ``mean_c |f|^p`` (p = 2), flattened and
    L2-normalised per image; loss ``beta / 2 * mean((a_s - a_t)^2)`` per pair (the paper's beta = 1000). Maps of
    different spatial sizes are average-pooled to the smaller one; channel counts may differ."""

    name = "attention"

    def __init__(self, pairs: Sequence[Pair], p: float = 2.0, beta: float = 1000.0):
        super().__init__(pairs)
        self.p, self.beta = p, beta

    def attention_map(self, x: Tensor) -> Tensor:
        return F.normalize(_as_4d(x.float()).abs().pow(self.p).mean(dim=1).flatten(1), dim=1)

    def pair_loss(self, index: int, student: Tensor, teacher: Tensor) -> Tensor:
        s, t = _common_spatial(_as_4d(student.float()), _as_4d(teacher.float()))
        return self.beta / 2 * (self.attention_map(s) - self.attention_map(t)).pow(2).mean()


def build_term(name: str, pairs: Sequence[Pair] | None = None, **kwargs) -> LossTerm:
    """A loss term by name; feature terms take ``pairs``, others their own keyword arguments."""
    if name not in TERMS:
        raise ValueError(f"unknown loss term {name!r}; available: {sorted(TERMS)}")
    cls = TERMS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "pairs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"loss term {name!r} has no option {unknown[0]!r}; its options are {accepted}")
    if issubclass(cls, FeatureTerm):
        return cls(pairs or [], **kwargs)
    return cls(**kwargs)


class DistillationLoss(nn.Module):
    """All terms together. ``reduction="mean"``: the plain average of every summand; ``"sum"``: a weighted sum
    with ``weights`` named by term (``soft_ce``) or by summand (``feature_mse_layer2``), default weight 1."""

    def __init__(self, terms: Sequence[LossTerm], reduction: str = "mean", weights: dict[str, float] | None = None):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' (plain average of all terms) or 'sum' (weighted), got {reduction!r}")
        if reduction == "mean" and weights:
            raise ValueError("weights apply to reduction 'sum'; reduction 'mean' is the plain average of all terms")
        if not terms:
            raise ValueError("at least one loss term is needed")
        wrong = [t for t in terms if not isinstance(t, LossTerm)]
        if wrong:
            raise TypeError(f"terms must be LossTerm modules (build them with build_term(name, ...)), got {wrong[0]!r}")
        if weights is not None and not isinstance(weights, dict):
            raise TypeError(f"weights must be a dict of term or summand name -> weight, got {type(weights).__name__}")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"each loss term may appear once (give a feature term several pairs instead): {names}")
        self.terms = nn.ModuleList(terms)
        self.reduction, self.weights = reduction, dict(weights or {})
        valid = self.weight_names()
        unknown = sorted(set(self.weights) - set(valid))
        if unknown:
            raise ValueError(f"weights name unknown terms or summands {unknown}; expected some of {valid}")
        for key, value in self.weights.items():
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"weight of {key!r} must be a finite number, got {value!r}")

    def weight_names(self) -> list[str]:
        """What ``weights`` may name: each term, and each summand of a feature term (``feature_mse_layer2``)."""
        names = []
        for term in self.terms:
            names.append(term.name)
            if isinstance(term, FeatureTerm):
                names += [term.summand(pair) for pair in term.pairs if term.summand(pair) != term.name]
        return names

    @property
    def feature_pairs(self) -> list[Pair]:
        return [pair for term in self.terms if isinstance(term, FeatureTerm) for pair in term.pairs]

    def build(self, student_shapes: dict[str, Shape], teacher_shapes: dict[str, Shape]) -> None:
        for term in self.terms:
            if isinstance(term, FeatureTerm):
                term.build(student_shapes, teacher_shapes)

    def forward(self, ctx: DistillContext) -> tuple[Tensor, dict[str, Tensor]]:
        summands: dict[str, Tensor] = {}
        weights: list[float] = []
        for term in self.terms:
            for key, value in term(ctx).items():
                summands[key] = value
                weights.append(self.weights.get(key, self.weights.get(term.name, 1.0)))
        values = torch.stack(list(summands.values()))
        if self.reduction == "mean":
            total = values.mean()
        else:
            total = (values * torch.tensor(weights, device=values.device, dtype=values.dtype)).sum()
        return total, summands
