"""How a mixed-precision search is shown: the activation-width label (:func:`act_label`, in the uniform points'
labels, the plot's title and the README headline), the Pareto plot of a :class:`~lit_kd.quant.bit_search.SearchResult`
and the printed table of ``lit-kd ptq --max-drop`` (:func:`print_search`).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from lit_kd.atomic import save_figure
from lit_kd.quant.cost_model import size_bytes

if TYPE_CHECKING:
    from lit_kd.quant.bit_search import SearchResult


def eval_words(images: int | None, sep: str = " ") -> str:
    """What the search's evaluation images are: training images kept out of calibration, which the network may have
    been trained on (so not held out from training)."""
    return f"{f'{images:,} ' if images else ''}training images{sep}held out from calibration, not from training"


def act_label(widths: dict[str, int], default: int | None = None) -> str:
    """``A4``, or ``A4 (A8: conv1, linear)`` when some layers' inputs have another width than ``default`` (the most
    common width when not given).

    Example::

        >>> act_label({"conv1": 8, "layer1.0.conv1": 4, "linear": 8}, default=4)
        'A4 (A8: conv1, linear)'
        >>> act_label({"conv1": 8, "layer1.0.conv1": 8})
        'A8'
    """
    common = default if default is not None else Counter(widths.values()).most_common(1)[0][0]
    others: dict[int, list[str]] = {}
    for path, bits in widths.items():
        if bits != common:
            others.setdefault(bits, []).append(path)
    extra = "; ".join(f"A{b}: {', '.join(paths)}" for b, paths in sorted(others.items(), reverse=True))
    return f"A{common}" + (f" ({extra})" if extra else "")


def pareto_plot(result: SearchResult, path: Path, eval_images: int | None = None) -> Path:
    """Accuracy on the evaluation data (``eval_images`` training images kept out of calibration, which the network
    may have been trained on) against weight size: every evaluated allocation, the front, the uniform widths, and the
    chosen one.

    Example::

        >>> result = search_bits(model, calib, held_out, max_drop=0.01)  # doctest: +SKIP
        >>> pareto_plot(result, Path("ptq.png"), eval_images=5000)  # doctest: +SKIP
        PosixPath('ptq.png')
    """
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
    ax.set_ylabel(f"accuracy (%) on {eval_words(eval_images, sep=chr(10))}", fontsize=9)
    ax.set_title(f"Mixed-precision search, activations {act_label(result.layer_act_bits, result.act_bits)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def print_search(summary: dict, result) -> None:
    from rich.console import Console
    from rich.table import Table

    chosen = result.chosen.weight_bits
    table = Table(title=f"Chosen allocation within {100 * result.max_drop:.2f} points on {eval_words(summary['eval_images'])}")
    for col in ("layer", "params", "bits (W/A)", "sensitivity (loss increase at that width)"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for path, facts in result.layers.items():
        act = result.layer_act_bits[path]
        table.add_row(path, f"{facts['params']:,}", f"{chosen[path]}/{act}", f"{result.sensitivity[path][chosen[path]]:+.4f}")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    t = summary["test_acc"]
    console.print(
        f"average weight bits {summary['chosen_average_weight_bits']:.2f}; weights {summary['chosen_weight_bytes'] / 1024:.1f} KiB "
        f"vs FP32 {summary['fp32_weight_bytes'] / 1024:.1f} KiB and uniform INT8 {summary['uniform_int8_weight_bytes'] / 1024:.1f} KiB"
    )
    console.print(
        "test accuracy: "
        + ", ".join(f"{k} {100 * v:.2f} %" for k, v in t.items())
        + f" (search {summary['search_seconds']} s; its measurements {summary['search_measured_seconds']} s over all attempts)"
    )
