"""Accuracy-driven mixed precision: the cheapest per-layer weight widths whose accuracy drop stays within a budget.

1. Sensitivity (:func:`~lit_kd.quant.sensitivity.layer_sensitivity`): each layer quantized alone at each candidate
   width, the loss increase over the float model.
2. Order (:func:`greedy_order`): starting from every layer at the widest candidate, a greedy sequence of one-step
   narrowings (a layer to its next smaller candidate), each time the step with the least sensitivity added per unit
   of cost (:mod:`lit_kd.quant.cost_model`) saved.
3. Search (:func:`search_bits`): a binary search along that sequence for the longest prefix whose accuracy drop
   on ``eval_data`` stays within ``max_drop``, plus evenly spaced points along it for the Pareto front; every point
   is a real quantization of all layers and an evaluation. ``eval_data`` must not be the test set: the CLI holds it
   out of the training split (``val_split``) and only reports test accuracy.
4. Resume: every measurement goes to ``cache`` as it is made (:class:`~lit_kd.quant.precision_cache.SearchCache`).

``max_drop`` is a fraction (0.01 = one accuracy point).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.nn as nn

from lit_kd.quant.affine import check_bits
from lit_kd.quant.cost_model import COSTS, allocation_cost, average_bits, layer_facts
from lit_kd.quant.precision_cache import SearchCache, search_key
from lit_kd.quant.ptq import Bits, bits_per_layer, calibration_batches, quantize
from lit_kd.quant.search_report import act_label
from lit_kd.quant.sensitivity import evaluate, layer_sensitivity


@dataclass
class Point:
    """One evaluated allocation: cost, accuracy on the evaluation data, and the widths by layer."""

    cost: float
    acc: float
    weight_bits: dict[str, int]
    label: str = ""


@dataclass
class SearchResult:
    chosen: Point
    fp32_acc: float
    max_drop: float
    act_bits: int  # the activation width of the layers not named otherwise; layer_act_bits has every layer's
    cost_kind: str
    fp32_cost: float
    uniform: list[Point]
    evaluated: list[Point]
    front: list[Point]
    sensitivity: dict[str, dict[int, float]]
    layers: dict[str, dict]  # path -> {"params", "macs"}
    order: list[tuple[str, int]] = field(default_factory=list)  # the greedy narrowing sequence
    measured_seconds: float = 0.0  # time spent on the measurements, summed over every attempt of a resumed search
    layer_act_bits: dict[str, int] = field(default_factory=dict)  # activation width of each layer's input

    def as_dict(self) -> dict:
        out = asdict(self)
        out["sensitivity"] = {p: {str(b): v for b, v in s.items()} for p, s in self.sensitivity.items()}
        return out


def activation_widths(act_bits: Bits, layers: dict[str, dict]) -> dict[str, int]:
    """Every layer's input width from an int or a mapping (``{"default": 4, "conv1": 8}``); a search quantizes every
    layer, so none may stay float.

    Example::

        >>> activation_widths({"default": 4, "conv1": 8}, {"conv1": {}, "layer1.0.conv1": {}, "linear": {}})
        {'conv1': 8, 'layer1.0.conv1': 4, 'linear': 4}
    """
    widths = bits_per_layer(act_bits, list(layers), "activation bit width")
    floating = [p for p, b in widths.items() if b is None]
    if floating:
        raise ValueError(f"activation bit width: a search quantizes every layer's input; {floating} would stay float")
    return widths


def greedy_order(
    sensitivity: dict[str, dict[int, float]], candidates: tuple[int, ...], act_bits: dict[str, int], layers: dict[str, dict], kind: str
) -> list[tuple[str, int]]:
    """The narrowing steps ``(layer, new width)`` from all-widest to all-narrowest, cheapest harm per saved cost first.

    Example::

        >>> layers = {"conv1": {"params": 100, "macs": 100}, "linear": {"params": 1000, "macs": 1000}}
        >>> sens = {"conv1": {8: 0.0, 4: 0.5, 2: 2.0}, "linear": {8: 0.0, 4: 0.1, 2: 5.0}}
        >>> greedy_order(sens, (2, 4, 8), 8, layers, "bits")
        [('linear', 4), ('conv1', 4), ('linear', 2), ('conv1', 2)]
    """
    widths = sorted(candidates, reverse=True)
    current = {p: widths[0] for p in sensitivity}
    steps = []
    while True:
        best = None
        for path, bits in current.items():
            i = widths.index(bits)
            if i + 1 == len(widths):
                continue
            lower = widths[i + 1]
            saved = allocation_cost({path: bits}, act_bits, layers, kind) - allocation_cost({path: lower}, act_bits, layers, kind)
            harm = max(sensitivity[path][lower] - sensitivity[path][bits], 0.0)
            score = harm / saved if saved > 0 else math.inf
            if best is None or score < best[0]:
                best = (score, path, lower)
        if best is None:
            return steps
        current[best[1]] = best[2]
        steps.append((best[1], best[2]))


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by increasing cost.

    Example::

        >>> points = [Point(10, 0.5, {}), Point(5, 0.6, {}), Point(20, 0.9, {})]
        >>> [(p.cost, p.acc) for p in pareto_front(points)]
        [(5, 0.6), (20, 0.9)]
    """
    front: list[Point] = []
    for p in sorted(points, key=lambda q: (q.cost, -q.acc)):
        if not front or p.acc > front[-1].acc:
            front.append(p)
    return front


def search_bits(
    model: nn.Module,
    calib_data: Iterable,
    eval_data: Iterable,
    max_drop: float,
    candidates=(2, 4, 8),
    cost: str = "bits",
    *,
    act_bits: Bits = 8,
    evaluations: int = 8,
    cache: Path | None = None,
    progress: Callable[[str], None] = lambda s: None,
    **quant_options,
) -> SearchResult:
    """The cheapest weight-width allocation found whose accuracy on ``eval_data`` is at most ``max_drop`` (a fraction)
    below the float model's, and the Pareto front of every allocation evaluated. ``act_bits`` is every layer's input
    width, or a mapping like ``{"default": 4, "conv1": 8, "linear": 8}``; ``quant_options`` go to
    :func:`~lit_kd.quant.ptq.quantize` (observer, per_channel, rounding, bias_correction, ...).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
        >>> images = torch.randn(64, 3, 8, 8)
        >>> calib, held_out = [images[:32]], [(images[32:], model(images[32:]).argmax(1))]
        >>> result = search_bits(model, calib, held_out, max_drop=0.05, candidates=(4, 8), evaluations=2)
        >>> result.fp32_acc - result.chosen.acc <= 0.05, sorted(result.chosen.weight_bits)
        (True, ['0', '3'])
        >>> [p.label for p in result.uniform]
        ['uniform W4A8', 'uniform W8A8']

        Resumable, per-layer activation widths, AdaRound (``quant_options`` as in :func:`~lit_kd.quant.ptq.quantize`):

        >>> search_bits(
        ...     model, calib, held_out, 0.01, (2, 3, 4, 8), act_bits={"default": 4, "0": 8},
        ...     rounding="adaround", cache=Path("ptq.cache.json"), progress=print,
        ... )  # doctest: +SKIP
    """
    candidates = tuple(sorted({check_bits(b, "candidate width") for b in candidates}))
    if not candidates:
        raise ValueError("candidates is empty: give at least one bit width, e.g. (2, 4, 8)")
    if not 0 <= max_drop < 1:
        raise ValueError(f"max_drop is a fraction of accuracy from 0 to 1 (0.01 = one point), got {max_drop}")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if not isinstance(act_bits, Mapping):
        check_bits(act_bits, "activation bit width")
    if evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    if quant_options.get("keep_first_last_8bit"):
        raise ValueError("keep_first_last_8bit does not apply to a search: the search chooses every layer's width")
    calib = calibration_batches(calib_data)
    eval_batches = [(b[0], b[1]) for b in eval_data]
    if not eval_batches:
        raise ValueError("eval_data is empty: expected (images, labels) batches held out from training")
    layers = layer_facts(model, calib[0])
    act = activation_widths(act_bits, layers)
    fp32_acc, _ = evaluate(model.eval(), eval_batches)
    default_act = act_bits.get("default") if isinstance(act_bits, Mapping) else act_bits
    default_act = default_act or Counter(act.values()).most_common(1)[0][0]
    uniform_act = len(set(act.values())) == 1  # then the key holds the width alone (as before per-layer widths existed)
    store = SearchCache(cache, search_key(model, next(iter(act.values())) if uniform_act else act, calib, eval_batches, quant_options))
    sens = layer_sensitivity(model, calib, eval_batches, candidates, act, quant_options, store, progress)

    def accuracy_of(widths: dict[str, int]) -> float:
        acc = store.accuracy(widths)
        if acc is None:
            start = time.perf_counter()
            acc, _ = evaluate(quantize(model, calib, widths, act, **quant_options), eval_batches)
            store.put_accuracy(widths, acc, time.perf_counter() - start)
        return acc

    steps = greedy_order(sens, candidates, act, layers, cost)
    evaluated: dict[int, Point] = {}

    def allocation(k: int) -> dict[str, int]:
        widths = {p: max(candidates) for p in layers}
        for path, bits in steps[:k]:
            widths[path] = bits
        return widths

    def point(k: int) -> Point:
        if k not in evaluated:
            widths = allocation(k)
            acc = accuracy_of(widths)
            evaluated[k] = Point(allocation_cost(widths, act, layers, cost), acc, widths, f"step {k}")
            progress(
                f"step {k}/{len(steps)}: average weight bits {average_bits(widths, layers):.2f}, accuracy {acc:.4f} "
                f"(drop {100 * (fp32_acc - acc):.2f} points)"
            )
        return evaluated[k]

    within = lambda k: fp32_acc - point(k).acc <= max_drop
    lo, hi = 0, len(steps)
    if not within(lo):
        lo = -1  # even the widest allocation misses the budget
    elif within(hi):
        lo = hi
    else:
        while hi - lo > 1:  # invariant: lo within budget, hi not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if within(mid) else (lo, mid)
    for k in {round(i * len(steps) / max(evaluations - 1, 1)) for i in range(evaluations)}:
        point(k)
    uniform = []
    for bits in candidates:
        widths = {p: bits for p in layers}
        acc = accuracy_of(widths)
        uniform.append(Point(allocation_cost(widths, act, layers, cost), acc, widths, f"uniform W{bits}{act_label(act, default_act)}"))
    ok = [p for p in [*evaluated.values(), *uniform] if fp32_acc - p.acc <= max_drop]
    chosen = min(ok, key=lambda p: (p.cost, -p.acc)) if ok else point(0)
    fp32_cost = allocation_cost({p: 32 for p in layers}, 32 if cost == "bops" else act, layers, cost)
    return SearchResult(
        chosen,
        fp32_acc,
        max_drop,
        default_act,
        cost,
        fp32_cost,
        uniform,
        sorted(evaluated.values(), key=lambda p: p.cost),
        pareto_front(list(evaluated.values()) + uniform),
        sens,
        layers,
        steps,
        store.measured_seconds(),
        act,
    )
