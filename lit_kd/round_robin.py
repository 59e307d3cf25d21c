"""Round-robin timing of several runners in one run, so that ratios between them come from the same machine state.

Every runner is built first; after warm-up calls of each at each batch size, each round times every runner in turn
(a fixed number of calls per batch size, their median kept), the order rotated by one runner each round. A runner's
figure is the median of its round medians, and its spread the fastest and slowest round.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

import numpy as np

from lit_kd.speed import call_seconds

Runner = Callable[[np.ndarray], object]


def rotated(names: list[str], shift: int) -> list[str]:
    """``names`` rotated left by ``shift`` (round ``shift`` of a round-robin)."""
    shift %= max(len(names), 1)
    return names[shift:] + names[:shift]


def round_robin(
    runs: dict[str, Runner], inputs: dict[int, np.ndarray], rounds: int, warmup: int, iterations: dict[int, int]
) -> dict[tuple[str, int], list[float]]:
    """Seconds per call of each (runner, batch size), one median per round (see the module docstring)."""
    if rounds < 1 or warmup < 0 or min(iterations.values()) < 1:
        raise ValueError(f"round_robin needs rounds >= 1, warmup >= 0 and iterations >= 1; got {rounds}, {warmup}, {iterations}")
    for run in runs.values():
        for x in inputs.values():
            call_seconds(partial(run, x), warmup, 0)
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for name in rotated(list(runs), r):
            for batch, x in inputs.items():
                seconds = call_seconds(partial(runs[name], x), 0, iterations[batch])
                times.setdefault((name, batch), []).append(statistics.median(seconds))
    return times


def spread_rows(times: dict[tuple[str, int], list[float]], iterations: dict[int, int]) -> list[dict]:
    """One row per (runner, batch): latency median over rounds and its min/max, images per second likewise."""
    rows = []
    for (name, batch), seconds in times.items():
        median, fast, slow = statistics.median(seconds), min(seconds), max(seconds)
        rows.append(
            {
                "setting": name,
                "batch": batch,
                "iterations": iterations[batch],
                "rounds": len(seconds),
                "latency_ms_median": 1000 * median,
                "latency_ms_min": 1000 * fast,
                "latency_ms_max": 1000 * slow,
                "latency_ms_per_round": [1000 * s for s in seconds],
                "images_per_s": batch / median,
                "images_per_s_min": batch / slow,
                "images_per_s_max": batch / fast,
            }
        )
    return rows
