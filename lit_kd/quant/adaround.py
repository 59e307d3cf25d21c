"""AdaRound (Nagel et al., 2020): learn, layer by layer, whether each weight rounds up or down.

The weight becomes ``scale * (clamp(floor(w / scale) + h(V) + zp, qmin, qmax) - zp)`` with the rectified sigmoid
``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``. ``V`` minimises the layer's output reconstruction
error (squared error summed per sample, averaged over the batch) against the float model, measured after the
activation that follows the layer when there is one (a ReLU: errors on outputs the ReLU zeroes do not count, as in
the paper's asymmetric reconstruction), plus
``reg_weight * sum(1 - |2 h(V) - 1| ** beta)``, with ``beta`` annealed from 20 to 2 after a warm-up without the
regulariser, which drives every ``h`` to 0 or 1. Adam at lr 1e-2 (the reference uses 1e-3 for 20k steps; a CPU
budget of about 1000 steps per layer needs the larger rate). The result is hard-rounded; if it reconstructs worse
than rounding to nearest on the calibration inputs, rounding to nearest is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_kd.quant.affine import dequantize, qrange
from lit_kd.quant.layers import QuantizedLayer

ZETA, GAMMA = 1.1, -0.1


@dataclass
class RoundingResult:
    codes: Tensor
    error_nearest: float
    error_learned: float
    kept: str  # "adaround" or "nearest"


def _rectified_sigmoid(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _identity(x: Tensor) -> Tensor:
    return x


def reconstruction_error(
    layer: QuantizedLayer,
    weight: Tensor,
    inputs: Tensor,
    targets: Tensor,
    batch_size: int = 256,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Mean squared error of ``activation(layer output)`` with ``weight`` against ``activation(targets)``, over all
    calibration inputs (no activation: the layer's output itself)."""
    act = activation or _identity
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            out = act(layer.forward_with_weight(inputs[start : start + batch_size], weight))
            total += (out - act(targets[start : start + batch_size])).pow(2).sum().item()
            count += out.numel()
    return total / max(count, 1)


def adaround(
    layer: QuantizedLayer,
    inputs: Tensor,
    targets: Tensor,
    iterations: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-2,
    reg_weight: float = 0.01,
    warmup: float = 0.2,
    beta_range: tuple[float, float] = (20.0, 2.0),
    seed: int = 0,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> RoundingResult:
    """Learn the rounding of ``layer``'s float weight (``layer.layer.weight``) given its calibration ``inputs`` (as
    seen in the quantized model) and the float model's outputs ``targets`` (before ``activation``, the function that
    follows the layer, applied here to both sides); returns the integer codes."""
    act = activation or _identity
    act_targets = act(targets)  # once; reconstruction_error below takes the raw targets and applies act itself
    weight = layer.layer.weight.detach().clone()
    axis = layer.weight_axis
    view = [-1] + [1] * (weight.dim() - 1) if axis is not None else []
    scale = layer.weight_scale.reshape(view) if axis is not None else layer.weight_scale
    zero_point = layer.weight_zero_point.reshape(view) if axis is not None else layer.weight_zero_point
    qmin, qmax = qrange(layer.weight_bits, layer.weight_symmetric)
    floor = torch.floor(weight / scale)
    rest = (weight / scale - floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)  # h(v) == rest at the start

    def soft_weight(h: Tensor) -> Tensor:
        return (torch.clamp(floor + h + zero_point, qmin, qmax) - zero_point) * scale

    optimizer = torch.optim.Adam([v], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    warm = int(warmup * iterations)
    for step in range(iterations):
        idx = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        h = _rectified_sigmoid(v)
        out = act(layer.forward_with_weight(inputs[idx], soft_weight(h)))
        loss = (out - act_targets[idx]).pow(2).flatten(1).sum(1).mean()  # as in the reference code (BRECQ)
        if step >= warm:
            progress = (step - warm) / max(iterations - warm, 1)
            beta = beta_range[1] + 0.5 * (beta_range[0] - beta_range[1]) * (1 + torch.cos(torch.tensor(progress * torch.pi)))
            loss = loss + reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        learned = torch.clamp(floor + (v >= 0).float() + zero_point, qmin, qmax)
        nearest = layer.weight_codes(weight)
        err_learned = reconstruction_error(
            layer, dequantize(learned, layer.weight_scale, layer.weight_zero_point, axis), inputs, targets, activation=act
        )
        err_nearest = reconstruction_error(
            layer, dequantize(nearest, layer.weight_scale, layer.weight_zero_point, axis), inputs, targets, activation=act
        )
    if err_learned <= err_nearest:
        return RoundingResult(learned, err_nearest, err_learned, "adaround")
    return RoundingResult(nearest, err_nearest, err_learned, "nearest")
