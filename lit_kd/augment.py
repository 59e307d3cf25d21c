"""Batched data augmentation on tensors (CPU or GPU): random crop with padding, horizontal flip, RandomResizedCrop
and mixup.

Augmentation is split in two so that it is both fast and reproducible:

- ``sample(n, generator)`` draws the random parameters of a batch on the CPU from a seeded generator (the data
  loader does this, so a resumed run draws the same parameters as an uninterrupted one);
- ``apply(images, labels, params)`` applies them to a whole batch at once on whatever device the batch is on (the
  data module calls it in ``on_after_batch_transfer``, so on a GPU the work happens there).

Images are float tensors in [0, 1], shape (N, C, H, W). With mixup the labels come back as class probabilities
(N, num_classes); ``torch.nn.functional.cross_entropy`` accepts those directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class BatchAugmentation:
    """What to do to each training batch.

    ``padding``: random crop after zero-padding each side by this many pixels (0 disables; ignored when
    ``random_resized_crop`` is on). ``random_resized_crop``: crop a random area fraction in ``rrc_scale`` with
    aspect ratio in ``rrc_ratio`` and resize back (bilinear). ``mixup_alpha``: mix each batch with a permutation
    of itself, weight drawn from Beta(alpha, alpha) once per batch (0 disables).
    """

    padding: int = 4
    hflip: bool = True
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mixup_alpha: float = 0.0
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        lo, hi = self.rrc_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"rrc_scale must satisfy 0 < low <= high <= 1, got {self.rrc_scale}")
        if not 0 < self.rrc_ratio[0] <= self.rrc_ratio[1]:
            raise ValueError(f"rrc_ratio must satisfy 0 < low <= high, got {self.rrc_ratio}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")

    def sample(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Random parameters for a batch of ``n`` images, drawn on the CPU from ``generator``."""
        params: dict[str, Tensor] = {}
        if self.hflip:
            params["flip"] = torch.rand(n, generator=generator) < 0.5
        if self.random_resized_crop:
            area = torch.empty(n).uniform_(*self.rrc_scale, generator=generator)
            log_ratio = torch.empty(n).uniform_(*map(math.log, self.rrc_ratio), generator=generator)
            ratio = log_ratio.exp()
            width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the image side
            height = (area / ratio).sqrt().clamp(max=1.0)
            cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)  # centre in [-1, 1] coordinates
            cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 0, 2] = width, cx
            theta[:, 1, 1], theta[:, 1, 2] = height, cy
            params["theta"] = theta
        elif self.padding:
            params["offset"] = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        if self.mixup_alpha > 0:
            params["lam"] = _sample_beta(self.mixup_alpha, generator)
            params["perm"] = torch.randperm(n, generator=generator)
        return params

    def apply(self, images: Tensor, labels: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Augment a float batch in [0, 1] with the parameters from :meth:`sample`."""
        flip = params.get("flip")
        if "theta" in params:
            theta = params["theta"].to(images.dtype)
            if flip is not None:  # fold the flip into the affine map: negate the x scale
                theta = theta.clone()
                theta[:, 0, 0] = torch.where(flip, -theta[:, 0, 0], theta[:, 0, 0])
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        else:
            if "offset" in params:
                images = random_crop(images, params["offset"], self.padding)
            if flip is not None:
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if "lam" in params:
            lam, perm = params["lam"].to(images.dtype), params["perm"]
            images = lam * images + (1 - lam) * images[perm]
            onehot = F.one_hot(labels, self.num_classes).to(images.dtype)
            labels = lam * onehot + (1 - lam) * onehot[perm]
        return images, labels


def random_crop(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Zero-pad each side by ``padding`` and cut an (H, W) window at per-image ``offsets`` (N, 2) = (row, col)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _sample_beta(alpha: float, generator: torch.Generator) -> Tensor:
    """One draw from Beta(alpha, alpha) using ``generator`` (X/(X+Y) with X, Y ~ Gamma(alpha))."""
    x, y = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
    return x / (x + y)
