"""Weight sparsity of a network: what pruning recipes and budgets count."""

from __future__ import annotations

import torch.nn as nn


def sparsity_counts(network: nn.Module) -> tuple[int, int]:
    """Zeros and total elements over the weights of every Conv2d and Linear (what pruning recipes target)."""
    zeros = total = 0
    for m in network.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros, total
