"""Observers: statistics of a tensor seen once (weights) or over calibration batches (activations), turned into a
scale and zero point for a given bit width.

- ``minmax``: the running minimum and maximum.
- ``moving_average``: minimum and maximum as an exponential moving average over batches (``averaging_constant``,
  default 0.1, heavier than torch's 0.01 because calibration sees tens of batches, not a training run); for weights,
  seen once, it equals ``minmax``.
- ``percentile``: the lower and upper ``percentile`` (default 99.99 %) averaged over batches, clipping outliers.
- ``mse``: the clipping range ``alpha * [min, max]`` whose fake-quantization has the smallest mean squared error on
  the observed values (a sample of at most ``max_samples`` values for activations), searched over ``grid`` values
  of alpha in (0, 1]. It depends on the bit width, which is why every observer answers ``qparams(bits, symmetric)``.

``axis=0`` keeps statistics per output channel (weights); ``axis=None`` per tensor.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lit_kd.quant.affine import fake_quantize, qparams

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")


def _rows(x: Tensor, axis: int | None) -> Tensor:
    """``x`` as a 2-D tensor: one row per channel along ``axis``, or a single row."""
    x = x.detach().float()
    return x.reshape(1, -1) if axis is None else x.transpose(0, axis).reshape(x.shape[axis], -1)


class Observer(nn.Module):
    """Running min/max of what it sees; subclasses refine how the range is estimated."""

    def __init__(self, axis: int | None = None):
        super().__init__()
        self.axis = axis
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))

    @property
    def seen(self) -> bool:
        return self.min_val.numel() > 0

    def batch_range(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        return rows.amin(dim=1), rows.amax(dim=1)

    def combine(self, lo: Tensor, hi: Tensor) -> None:
        self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        lo, hi = self.batch_range(_rows(x, self.axis))
        if self.seen:
            self.combine(lo, hi)
        else:
            self.min_val, self.max_val = lo, hi
        return x

    def qparams(self, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        if not self.seen:
            raise RuntimeError(f"{type(self).__name__} has observed nothing: run calibration data through it first")
        return qparams(self.min_val, self.max_val, bits, symmetric)


class MinMaxObserver(Observer):
    pass


class MovingAverageMinMaxObserver(Observer):
    def __init__(self, axis: int | None = None, averaging_constant: float = 0.1):
        super().__init__(axis)
        self.averaging_constant = averaging_constant

    def combine(self, lo: Tensor, hi: Tensor) -> None:
        c = self.averaging_constant
        self.min_val = self.min_val + c * (lo - self.min_val)
        self.max_val = self.max_val + c * (hi - self.max_val)


class PercentileObserver(Observer):
    """Per-batch ``percentile`` and ``100 - percentile`` quantiles, averaged over batches."""

    def __init__(self, axis: int | None = None, percentile: float = 99.99, max_samples: int = 1 << 20):
        super().__init__(axis)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile, self.max_samples, self.batches = percentile, max_samples, 0
        self.generator = torch.Generator().manual_seed(0)

    def batch_range(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        if rows.shape[1] > self.max_samples:  # torch.quantile has an input size limit; a random sample suffices
            rows = rows[:, torch.randperm(rows.shape[1], generator=self.generator)[: self.max_samples]]
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(rows, q, dim=1)
        return lo, hi

    def combine(self, lo: Tensor, hi: Tensor) -> None:
        n = self.batches
        self.min_val, self.max_val = (self.min_val * n + lo) / (n + 1), (self.max_val * n + hi) / (n + 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel():
            super().forward(x)
            self.batches += 1
        return x


class MSEObserver(Observer):
    """Min/max, plus a sample of the values on which the MSE-optimal clipping ratio is searched."""

    def __init__(self, axis: int | None = None, grid: int = 100, max_samples: int = 1 << 20):
        super().__init__(axis)
        self.grid, self.max_samples = grid, max_samples
        self.samples: list[Tensor] = []
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        super().forward(x)
        rows = _rows(x, self.axis)
        per_batch = self.max_samples // 16
        if self.axis is None and rows.shape[1] > per_batch:
            rows = rows[:, torch.randperm(rows.shape[1], generator=self.generator)[:per_batch]]
        self.samples.append(rows)
        while len(self.samples) > 1 and sum(s.shape[1] for s in self.samples) > self.max_samples:
            self.samples.pop(0)
        return x

    def qparams(self, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        if not self.seen:
            raise RuntimeError("MSEObserver has observed nothing: run calibration data through it first")
        values = torch.cat(self.samples, dim=1)
        best_err = torch.full((values.shape[0],), float("inf"))
        best = qparams(self.min_val, self.max_val, bits, symmetric)
        for alpha in torch.linspace(1.0, 1.0 / self.grid, self.grid):
            scale, zero_point = qparams(self.min_val * alpha, self.max_val * alpha, bits, symmetric)
            err = (fake_quantize(values, scale, zero_point, bits, symmetric, axis=0) - values).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = (torch.where(better, scale, best[0]), torch.where(better, zero_point, best[1]))
        return best


def make_observer(name: str, axis: int | None = None) -> Observer:
    """An observer by name (one of ``OBSERVERS``)."""
    classes = {
        "minmax": MinMaxObserver,
        "moving_average": MovingAverageMinMaxObserver,
        "percentile": PercentileObserver,
        "mse": MSEObserver,
    }
    if name not in classes:
        raise ValueError(f"unknown observer {name!r}; expected one of {list(OBSERVERS)}")
    return classes[name](axis=axis)
