"""The report's figures (matplotlib, Agg): training curves read back from TensorBoard events, per-layer sparsity,
and one test image per class with every model's prediction."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from lit_kd.atomic import save_figure

CURVE_TAGS = ("train/loss", "val/loss", "train/acc", "val/acc")


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


def curves_figure(curves_by_stage: dict[str, dict], path: Path) -> Path:
    """Loss and accuracy per epoch for every training stage: one row per stage, train dashed, validation solid."""
    n = len(curves_by_stage)
    fig, axes = plt.subplots(n, 2, figsize=(10, 2.6 * n), squeeze=False)
    for row, (stage, curves) in zip(axes, curves_by_stage.items()):
        for ax, metric in zip(row, ("loss", "acc")):
            for split, style in (("train", "--"), ("val", "-")):
                points = curves.get(f"{split}/{metric}", [])
                if points:
                    ax.plot([p[0] + 1 for p in points], [p[1] for p in points], style, marker=".", label=split)
            ax.set_title(f"{stage}: {metric}" + (" (train: the whole training loss)" if metric == "loss" else ""), fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def accuracy_overview_figure(curves_by_stage: dict[str, dict], groups: dict[str, str | None], path: Path) -> Path:
    """Validation accuracy per epoch of every training stage on one plot: one colour per stage or seed group (its
    seeds solid, dashed, dotted ...), so setups can be compared and where each stopped is visible."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    colours = plt.get_cmap("tab20").colors
    keys: list[str] = []
    seen: dict[str, int] = {}
    for stage, curves in curves_by_stage.items():
        points = curves.get("val/acc", [])
        if not points:
            continue
        key = groups.get(stage) or stage
        if key not in keys:
            keys.append(key)
        nth = seen[key] = seen.get(key, -1) + 1
        ax.plot(
            [p[0] + 1 for p in points],
            [100 * p[1] for p in points],
            linestyle=("-", "--", ":", "-.")[nth % 4],
            color=colours[2 * keys.index(key) % len(colours)],
            marker=".",
            label=stage,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
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


def examples_figure(images, classes: list[str], labels: list[int], path: Path) -> Path:
    """The test images (N x 3 x H x W in [0, 1]) with their true class."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.0), squeeze=False)
    for ax, image, label in zip(axes[0], images, labels):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(classes[label], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
