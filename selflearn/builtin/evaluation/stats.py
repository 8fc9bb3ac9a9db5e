"""Means with their spread: a percentile bootstrap confidence interval and the standard error.

Held-out sets are small (the paper's Wiki-Test has 200 questions, the offline run far fewer), so
every before/after figure is reported with its spread. Paired differences (candidate minus
baseline on the same items) are bootstrapped over items, which is tighter and more honest than
comparing two independent intervals. Plain Python, seeded: the same values give the same
interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

#: bootstrap resamples used by default
DEFAULT_RESAMPLES = 1000


def mean_ci(
    values: Sequence[float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"n", "mean", "stderr", "ci_low", "ci_high", "level"}`` over the non-None values.

    ``ci_low``/``ci_high`` are the percentile bootstrap interval at ``level`` (None with fewer
    than two values, where no spread can be estimated); ``stderr`` is the sample standard
    deviation over sqrt(n).
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": None, "stderr": None, "ci_low": None, "ci_high": None,
                           "level": level}
    if n == 0:
        return out
    mean = sum(xs) / n
    out["mean"] = mean
    if n < 2:
        return out
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    out["stderr"] = math.sqrt(var / n)
    if resamples > 0:
        rng = random.Random(seed)
        out["ci_low"], out["ci_high"] = percentile_interval(
            [sum(rng.choices(xs, k=n)) / n for _ in range(resamples)], level
        )
    return out


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap statistics (percentile method; non-empty)."""
    ordered = sorted(values)
    lo = (1.0 - level) / 2.0
    last = len(ordered) - 1
    return (ordered[min(last, max(0, int(math.floor(lo * len(ordered)))))],
            ordered[min(last, max(0, int(math.ceil((1 - lo) * len(ordered))) - 1))])


def paired_difference(
    baseline: Sequence[float | None],
    candidate: Sequence[float | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`mean_ci` of ``candidate - baseline`` over the items where both are known."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired values differ in length: {len(baseline)} vs {len(candidate)}")
    diffs = [c - b for b, c in zip(baseline, candidate, strict=False) if b is not None and c is not None]
    return mean_ci(diffs, resamples=resamples, level=level, seed=seed)
