"""The report's figures (matplotlib, Agg): training curves read back from TensorBoard events, per-layer sparsity,
accuracy against parameters over pruning cycles, and one test image per class with every model's prediction."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from lit_kd.atomic import save_figure

CURVE_TAGS = ("train/loss", "val/loss", "train/acc", "val/acc", "prune/nonzero")  # prune/nonzero: IterativePruning's count


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(epoch, value), ...]`` for the epoch-level scalars of a Lightning run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    epochs = {e.step: e.value for e in events.Scalars("epoch")} if "epoch" in tags else {}
    curves = {}
    for tag in CURVE_TAGS:
        if tag in tags:
            points = {}
            for e in events.Scalars(tag):  # a resumed run may log a step twice: keep the latest
                points[int(epochs.get(e.step, e.step))] = e.value
            curves[tag] = sorted(points.items())
    return curves


def distinct_colours(n: int) -> list:
    """``n`` colours, no two alike: tab10 up to 10, tab20 (dark ones first) up to 20, evenly spaced hues beyond."""
    if n <= 10:
        return list(plt.get_cmap("tab10").colors[:n])
    if n <= 20:
        pairs = plt.get_cmap("tab20").colors
        return list(pairs[0::2] + pairs[1::2])[:n]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def validation_label(val_data: dict[str, str]) -> tuple[str, bool]:
    """The axis words for the validation data of the stages shown (``stage -> "test set"`` or ``"5,000 held-out training
    images"``), and whether they differ between stages (the legend then names each stage's)."""
    sources = set(val_data.values())
    return (f"validation on the {sources.pop()}" if len(sources) == 1 else "validation (data per stage in the legend)"), len(sources) > 1


def curves_figure(curves_by_stage: dict[str, dict], path: Path, val_data: dict[str, str]) -> Path:
    """Per training stage, one row of three panels: the training loss (every term of the stage's loss), the
    validation cross-entropy, and accuracy (train dashed, validation solid); ``val_data`` names each stage's validation
    data (:func:`validation_label`)."""
    n = len(curves_by_stage)
    fig, axes = plt.subplots(n, 3, figsize=(13, 2.6 * n), squeeze=False)
    panels = (
        ("training loss (all terms)", (("train/loss", "--", "tab:blue", "train"),)),
        ("validation cross-entropy", (("val/loss", "-", "tab:orange", "validation"),)),
        ("accuracy", (("train/acc", "--", "tab:blue", "train"), ("val/acc", "-", "tab:orange", "validation"))),
    )
    for row, (stage, curves) in zip(axes, curves_by_stage.items()):
        for ax, (title, series) in zip(row, panels):
            for tag, style, colour, label in series:
                points = curves.get(tag, [])
                if points:
                    ax.plot([p[0] + 1 for p in points], [p[1] for p in points], style, color=colour, marker=".", label=label)
            where = {"accuracy": f" (validation on the {val_data[stage]})", "validation cross-entropy": f" on the {val_data[stage]}"}
            ax.set_title(f"{stage}: {title}{where.get(title, '')}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel({"accuracy": "accuracy"}.get(title, "loss"))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def accuracy_overview_figure(curves_by_stage: dict[str, dict], groups: dict[str, str | None], path: Path, val_data: dict[str, str]) -> Path:
    """Validation accuracy per epoch of every training stage on one plot: one colour per stage or seed group, no
    colour used twice (its seeds solid, dashed, dotted ...), so setups can be compared and where each stopped is
    visible; the y axis names the validation data (``val_data``, :func:`validation_label`)."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    shown = {stage: curves["val/acc"] for stage, curves in curves_by_stage.items() if curves.get("val/acc")}
    keys = list(dict.fromkeys(groups.get(stage) or stage for stage in shown))
    colours = dict(zip(keys, distinct_colours(len(keys))))
    label, per_stage = validation_label({stage: val_data[stage] for stage in shown})
    seen: dict[str, int] = {}
    for stage, points in shown.items():
        key = groups.get(stage) or stage
        nth = seen[key] = seen.get(key, -1) + 1
        ax.plot(
            [p[0] + 1 for p in points],
            [100 * p[1] for p in points],
            linestyle=("-", "--", ":", "-.")[nth % 4],
            color=colours[key],
            marker=".",
            label=f"{stage} ({val_data[stage]})" if per_stage else stage,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"accuracy (%), {label}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def sparsity_figure(layers_by_stage: dict[str, dict[str, float]], path: Path) -> Path:
    """Horizontal bars: the fraction of zero weights of every conv/linear layer, one panel per pruned model."""
    n = len(layers_by_stage)
    height = max(len(v) for v in layers_by_stage.values()) * 0.22 + 1.2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, height), squeeze=False)
    for ax, (stage, layers) in zip(axes[0], layers_by_stage.items()):
        names = list(layers)
        ax.barh(range(len(names)), [100 * layers[k] for k in names], color="tab:purple")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("zero weights (%)")
        ax.set_title(stage, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def pruning_cycles(curves: dict) -> list[tuple[int, float, float]]:
    """``[(epoch, non-zero parameters, validation accuracy), ...]`` of a run whose parameter count changed while it
    trained (``IterativePruning`` logs ``prune/nonzero`` every epoch); empty for any other run."""
    nonzero, acc = dict(curves.get("prune/nonzero", [])), dict(curves.get("val/acc", []))
    if len(set(nonzero.values())) < 2:
        return []
    return [(epoch, nonzero[epoch], acc[epoch]) for epoch in sorted(nonzero) if epoch in acc]


def pruning_figure(cycles_by_stage: dict[str, list], controls: dict[str, tuple[str, float]], path: Path, val_data: dict[str, str]) -> Path:
    """Validation accuracy after every epoch against the non-zero parameters left then (log scale, fewer to the right),
    one panel per pruned run, its epochs numbered; ``controls``: ``stage -> (control stage, its last validation
    accuracy)``, drawn as a dashed line (the dense fine-tune of the same start for the same epochs)."""
    n = len(cycles_by_stage)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.2), squeeze=False)
    for ax, (stage, points) in zip(axes[0], cycles_by_stage.items()):
        ax.plot([p[1] for p in points], [100 * p[2] for p in points], marker="o", color="tab:purple", label=stage)
        for epoch, nonzero, acc in points:
            ax.annotate(str(epoch + 1), (nonzero, 100 * acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if stage in controls:
            name, acc = controls[stage]
            ax.axhline(100 * acc, linestyle="--", color="tab:gray", label=f"{name} (dense, same epochs): last epoch")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("non-zero parameters (whole network, BatchNorm included; log scale)")
        ax.set_ylabel(f"accuracy (%), validation on the {val_data[stage]}")
        ax.set_title(f"{stage}: after each epoch (numbered)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def examples_figure(images, classes: list[str], labels: list[int], path: Path) -> Path:
    """The test images (N x 3 x H x W in [0, 1]) with their true class."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.0), squeeze=False)
    for ax, image, label in zip(axes[0], images, labels):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(classes[label], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
