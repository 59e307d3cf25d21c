"""Is a difference between two groups of seeds real? Mean, sample standard deviation, the standard error of the
difference of two group means (Welch: ``sqrt(s1²/n1 + s2²/n2)``) and the report's verdict: ``real`` only when the
difference exceeds twice its standard error; with one seed on either side there is no spread to test against.

    difference([0.80, 0.82, 0.84], [0.70, 0.71, 0.72])   # (0.11, 0.0129..., "real")
"""

from __future__ import annotations

import math
import statistics

REAL, NOT_REAL, NOT_TESTABLE = "real", "not real", "not testable (1 seed)"


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of no values: give at least one accuracy")
    return statistics.mean(values)


def sample_std(values: list[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator); None for fewer than two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def standard_error(values: list[float], baseline: list[float]) -> float | None:
    """The standard error of ``mean(values) - mean(baseline)`` (Welch); None when either side has one value."""
    s1, s2 = sample_std(values), sample_std(baseline)
    if s1 is None or s2 is None:
        return None
    return math.sqrt(s1**2 / len(values) + s2**2 / len(baseline))


def verdict(diff: float, se: float | None) -> str:
    """``real`` when ``|diff| > 2 se``, ``not real`` otherwise, ``not testable (1 seed)`` without a standard error."""
    if se is None:
        return NOT_TESTABLE
    return REAL if abs(diff) > 2 * se else NOT_REAL


def difference(values: list[float], baseline: list[float]) -> tuple[float, float | None, str]:
    """``(mean(values) - mean(baseline), its standard error, the verdict)``."""
    diff = mean(values) - mean(baseline)
    se = standard_error(values, baseline)
    return diff, se, verdict(diff, se)


def verdict_text(se: float | None, verdict_: str) -> str:
    """The verdict in the report's and the headline's words: ``SE 1.07 points: real, above 2 SE``."""
    if se is None:
        return "1 seed: not testable"
    return f"SE {100 * se:.2f} points: {verdict_}, {'above' if verdict_ == REAL else 'within'} 2 SE"


def seeds_for_real(diff: float, se: float, n: int) -> int | None:
    """Seeds per side at which a difference this large would exceed 2 SE, if the spread stays as measured
    (the standard error shrinks as ``1 / sqrt(seeds)``); None for a zero difference."""
    if diff == 0:
        return None
    return max(n + 1, math.floor(n * (2 * se / abs(diff)) ** 2) + 1)
