"""Accuracy-driven mixed precision: the cheapest per-layer weight widths whose accuracy drop stays within a budget.

1. Sensitivity (:func:`layer_sensitivity`): for every Conv2d/Linear layer and candidate width, quantize that layer
   alone (its weights at the width, its input at ``act_bits``; every other layer left in float) and measure the
   increase of the cross-entropy on the evaluation images over the float model.
2. Order: starting from every layer at the widest candidate, a greedy sequence of one-step narrowings (a layer to
   its next smaller candidate), each time the step with the least sensitivity added per unit of cost saved.
3. Search (:func:`search_bits`): a binary search along that sequence for the longest prefix whose accuracy drop
   on ``eval_data`` stays within ``max_drop``, plus evenly spaced points along it for the Pareto front; every point
   is a real quantization of all layers and an evaluation. ``eval_data`` must not be the test set: the CLI holds it
   out of the training split (``val_split``) and only reports test accuracy.
4. Resume: every measurement (a layer's sensitivities, an allocation's accuracy) goes to ``cache`` as it is made
   (:class:`SearchCache`), so an interrupted search (hours with AdaRound on 2 cores) continues where it stopped.

Cost: ``bits`` is the weights' storage, sum of parameters x width; ``bops`` is sum of MACs x weight width x
activation width (Baskin et al.), both counted over the quantized layers. ``max_drop`` is a fraction (0.01 = one
accuracy point).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_kd.atomic import save_figure, write_text
from lit_kd.quant.affine import check_bits
from lit_kd.quant.ptq import Bits, bits_per_layer, calibration_batches, execution_order, fold_batchnorm, quantize

COSTS = ("bits", "bops")


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


def layer_facts(model: nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """Parameters of the weight and MACs per output, per quantizable layer in execution order."""
    folded = fold_batchnorm(model)
    order = execution_order(folded, example[:1])
    shapes: dict[str, tuple] = {}

    def record(path: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output stays as it is
            shapes[path] = tuple(output.shape)

        return hook

    handles = [folded.get_submodule(p).register_forward_hook(record(p)) for p in order]
    with torch.no_grad():
        folded(example[:1])
    for h in handles:
        h.remove()
    facts = {}
    for path in order:
        weight = folded.get_submodule(path).weight
        spatial = math.prod(shapes[path][2:]) if len(shapes[path]) > 2 else 1
        facts[path] = {"params": weight.numel(), "macs": weight.numel() * spatial}
    return facts


def allocation_cost(weight_bits: dict[str, int], act_bits: int | dict[str, int], layers: dict[str, dict], kind: str) -> float:
    """Weight bits (``bits``) or bit operations (``bops``: MACs x weight width x activation width, per layer)."""
    if kind == "bits":
        return float(sum(layers[p]["params"] * b for p, b in weight_bits.items()))
    act = act_bits if isinstance(act_bits, dict) else dict.fromkeys(weight_bits, act_bits)
    return float(sum(layers[p]["macs"] * b * act[p] for p, b in weight_bits.items()))


def activation_widths(act_bits: Bits, layers: dict[str, dict]) -> dict[str, int]:
    """Every layer's input width from an int or a mapping (``{"default": 4, "conv1": 8}``); a search quantizes every
    layer, so none may stay float."""
    widths = bits_per_layer(act_bits, list(layers), "activation bit width")
    floating = [p for p, b in widths.items() if b is None]
    if floating:
        raise ValueError(f"activation bit width: a search quantizes every layer's input; {floating} would stay float")
    return widths


def act_label(widths: dict[str, int], default: int | None = None) -> str:
    """``A4``, or ``A4 (A8: conv1, linear)`` when some layers' inputs have another width than ``default`` (the most
    common width when not given)."""
    common = default if default is not None else Counter(widths.values()).most_common(1)[0][0]
    others: dict[int, list[str]] = {}
    for path, bits in widths.items():
        if bits != common:
            others.setdefault(bits, []).append(path)
    extra = "; ".join(f"A{b}: {', '.join(paths)}" for b, paths in sorted(others.items(), reverse=True))
    return f"A{common}" + (f" ({extra})" if extra else "")


def evaluate(model: nn.Module, batches: list) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``(images, labels)`` batches."""
    correct = total = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            total += len(y)
    return correct / total, loss / total


def search_key(model: nn.Module, act_bits: int | dict[str, int], calib: list, eval_batches: list, options: dict) -> str:
    """A hash of what a search's measurements depend on: the model's weights, the activation width, the calibration
    and evaluation images and the quantizer options (not the candidate widths: each measurement names its widths, so a
    search with more candidates reuses those of one with fewer)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps(["others float", act_bits, options], sort_keys=True).encode())
    for x in [*calib, *(x for x, _ in eval_batches)]:
        digest.update(x.cpu().numpy().tobytes()[:4096])
        digest.update(str(tuple(x.shape)).encode())
    return digest.hexdigest()


class SearchCache:
    """The measurements of a search, kept in a JSON file as they are made (written atomically after each), so an
    interrupted search resumes where it stopped: per-layer sensitivities and the accuracy of every allocation
    evaluated. Entries are used only when the file's key (:func:`search_key`) is this search's; ``path=None``
    keeps them in memory."""

    def __init__(self, path: Path | None, key: str):
        self.path, self.key = path, key
        self.data: dict = {"key": key, "sensitivity": {}, "accuracy": {}, "seconds": {}}
        if path is not None and Path(path).is_file():
            try:
                stored = json.loads(Path(path).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                stored = {}  # unreadable: measured again
            if isinstance(stored, dict) and stored.get("key") == key:
                self.data["sensitivity"] = stored.get("sensitivity") or {}
                self.data["accuracy"] = stored.get("accuracy") or {}
                self.data["seconds"] = stored.get("seconds") or {}

    def sensitivity(self, path: str) -> dict[int, float] | None:
        found = self.data["sensitivity"].get(path)
        return {int(b): v for b, v in found.items()} if found is not None else None

    def accuracy(self, widths: dict[str, int | None]) -> float | None:
        return self.data["accuracy"].get(json.dumps(widths, sort_keys=True))

    def put_sensitivity(self, path: str, values: dict[int, float], seconds: float) -> None:
        """Add a layer's sensitivities at some widths (kept beside those stored at other widths)."""
        self.data["sensitivity"].setdefault(path, {}).update({str(b): v for b, v in values.items()})
        self.data["seconds"]["sensitivity " + path] = self.data["seconds"].get("sensitivity " + path, 0.0) + seconds
        self._save()

    def put_accuracy(self, widths: dict[str, int | None], acc: float, seconds: float) -> None:
        key = json.dumps(widths, sort_keys=True)
        self.data["accuracy"][key] = acc
        self.data["seconds"]["accuracy " + key] = seconds
        self._save()

    def measured_seconds(self) -> float:
        """The time the stored measurements took, whichever attempt made them."""
        return float(sum(self.data["seconds"].values()))

    def _save(self) -> None:
        if self.path is not None:
            write_text(self.path, json.dumps(self.data, indent=1))


def layer_sensitivity(
    model: nn.Module,
    calib: list,
    eval_batches: list,
    candidates: tuple[int, ...],
    act_bits: dict[str, int],
    quant_options: dict,
    cache: SearchCache,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, dict[int, float]]:
    """``{layer: {bits: loss increase}}`` with each layer quantized alone at each candidate width; widths already in
    ``cache`` are not measured again, each layer's new ones are added to it as soon as they are measured."""
    _, float_loss = evaluate(model, eval_batches)
    order = execution_order(fold_batchnorm(model), calib[0][:1])
    result: dict[str, dict[int, float]] = {}
    for path in order:
        cached = cache.sensitivity(path) or {}
        missing = [b for b in candidates if b not in cached]
        if missing:
            measured, start = {}, time.perf_counter()
            for bits in missing:
                qmodel = quantize(model, calib, {"default": None, path: bits}, {"default": None, path: act_bits[path]}, **quant_options)
                measured[bits] = evaluate(qmodel, eval_batches)[1] - float_loss
            cache.put_sensitivity(path, measured, time.perf_counter() - start)
            cached = {**cached, **measured}
        result[path] = {b: cached[b] for b in candidates}
        source = "" if missing == list(candidates) else f" ({len(candidates) - len(missing)} from {cache.path})"
        progress(f"sensitivity {path}: " + ", ".join(f"{b} bits {v:+.4f}" for b, v in result[path].items()) + source)
    return result


def greedy_order(
    sensitivity: dict[str, dict[int, float]], candidates: tuple[int, ...], act_bits: dict[str, int], layers: dict[str, dict], kind: str
) -> list[tuple[str, int]]:
    """The narrowing steps ``(layer, new width)`` from all-widest to all-narrowest, cheapest harm per saved cost first."""
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
    """The points no other point beats on both cost (lower) and accuracy (higher), by increasing cost."""
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
    :func:`~lit_kd.quant.ptq.quantize` (observer, per_channel, rounding, bias_correction, ...)."""
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


def average_bits(weight_bits: dict[str, int], layers: dict[str, dict]) -> float:
    """Parameter-weighted average weight width."""
    total = sum(layers[p]["params"] for p in weight_bits)
    return sum(layers[p]["params"] * b for p, b in weight_bits.items()) / total


def size_bytes(weight_bits: dict[str, int], layers: dict[str, dict]) -> float:
    """Storage of the quantized layers' weights (scales and biases not counted)."""
    return sum(layers[p]["params"] * b for p, b in weight_bits.items()) / 8


def pareto_plot(result: SearchResult, path: Path, test_acc: dict[str, float] | None = None) -> Path:
    """Accuracy on the evaluation data against weight size: every evaluated allocation, the front, the uniform
    widths, and the chosen one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kb = lambda p: size_bytes(p.weight_bits, result.layers) / 1024
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([kb(p) for p in result.evaluated], [100 * p.acc for p in result.evaluated], s=18, color="tab:gray", label="evaluated")
    ax.plot([kb(p) for p in result.front], [100 * p.acc for p in result.front], "-", color="tab:blue", label="Pareto front")
    ax.scatter(
        [kb(p) for p in result.uniform], [100 * p.acc for p in result.uniform], marker="s", s=40, color="tab:orange", label="uniform"
    )
    for p in result.uniform:
        short = p.label.removeprefix("uniform ").split(" (")[0]  # the title names per-layer activation widths
        ax.annotate(short, (kb(p), 100 * p.acc), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.scatter([kb(result.chosen)], [100 * result.chosen.acc], marker="*", s=160, color="tab:red", label="chosen", zorder=5)
    ax.axhline(100 * (result.fp32_acc - result.max_drop), color="tab:red", linestyle=":", linewidth=1, label="budget")
    ax.axhline(100 * result.fp32_acc, color="black", linestyle="--", linewidth=1, label="FP32")
    ax.set_xlabel("weight storage of the quantized layers (KiB)")
    ax.set_ylabel("accuracy on the held-out images (%)")
    ax.set_title(f"Mixed-precision search, activations {act_label(result.layer_act_bits, result.act_bits)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
