"""Per-layer parameters, non-zero parameters and multiply-accumulates (MACs) of any model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class LayerStats:
    name: str
    kind: str
    params: int
    nonzero: int
    macs: int
    output_shape: tuple


def _effective_params(module: nn.Module) -> list[torch.Tensor]:
    """The module's own parameters, with a pruned ``weight_orig`` replaced by the masked ``weight`` it yields."""
    out = []
    for name, param in module.named_parameters(recurse=False):
        base = name.removesuffix("_orig")
        out.append(getattr(module, base) if base != name and hasattr(module, base) else param)
    return out


def model_summary(model: nn.Module, input_size=(1, 3, 32, 32)) -> list[LayerStats]:
    """One row per module that owns parameters or does a conv/linear product, in execution order.

    MACs are per image: a convolution costs ``out_elements * in_channels/groups * kh * kw``, a linear layer
    ``out_features * in_features``; other layers are counted as 0. Non-zero counts see pruning masks, because
    they read the effective ``weight`` (for ``torch.nn.utils.prune`` that is ``weight_orig * weight_mask``).
    """
    rows: dict[str, LayerStats] = {}
    order: list[str] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        name = names[module]
        batch = inputs[0].shape[0]
        if isinstance(module, nn.Conv2d):
            macs = output.numel() // batch * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            macs = output.numel() // batch * module.in_features
        else:
            macs = 0
        row = rows.get(name)
        if row is None:
            order.append(name)
            rows[name] = LayerStats(name, type(module).__name__, 0, 0, macs, tuple(output.shape[1:]))
        else:  # a module called twice adds its cost again
            row.macs += macs

    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own or isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for name in order:
        params = _effective_params(model.get_submodule(name))
        rows[name].params = sum(p.numel() for p in params)
        rows[name].nonzero = int(sum((p != 0).sum().item() for p in params))
    return [rows[n] for n in order]


def summary_totals(rows: list[LayerStats]) -> dict[str, int]:
    return {
        "params": sum(r.params for r in rows),
        "nonzero": sum(r.nonzero for r in rows),
        "macs": sum(r.macs for r in rows),
    }


def print_summary(model: nn.Module, input_size=(1, 3, 32, 32), console=None) -> dict[str, int]:
    """Print the per-layer table with rich and return the totals."""
    from rich.console import Console
    from rich.table import Table

    rows = model_summary(model, input_size)
    table = Table(title=f"{type(model).__name__}: parameters and MACs per layer (input {tuple(input_size)})")
    for col in ("layer", "type", "output", "params", "non-zero", "MACs"):
        table.add_column(col, justify="left" if col in ("layer", "type", "output") else "right")
    for r in rows:
        table.add_row(r.name or "(root)", r.kind, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.nonzero:,}", f"{r.macs:,}")
    totals = summary_totals(rows)
    table.add_row("total", "", "", f"{totals['params']:,}", f"{totals['nonzero']:,}", f"{totals['macs']:,}", style="bold")
    (console or Console()).print(table)
    return totals
