"""The numbers of ``evaluation/report.json``, computed from paired answer rows.

A *pair* is a baseline row and a candidate row for the same (set, question), as returned by
:func:`selflearn.core.evaluation.pair_answers`. Every mean comes with its 95% bootstrap interval, and every
before/after difference is paired over items (:mod:`.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .qa import METRICS
from .stats import mean_ci, paired_difference

Pair = tuple[dict[str, Any], dict[str, Any]]


def disagreement_block(pairs: Sequence[Pair], *, resamples: int, seed: int) -> dict[str, Any]:
    """Baseline and candidate mean disagreement with the reference (lower is better), their
    paired difference, and how many items each model was closer on."""
    bs = [b["disagreement"] for b, _ in pairs]
    cs = [c["disagreement"] for _, c in pairs]
    both = [(x, y) for x, y in zip(bs, cs, strict=True) if x is not None and y is not None]
    return {
        "baseline": mean_ci(bs, resamples=resamples, seed=seed),
        "candidate": mean_ci(cs, resamples=resamples, seed=seed),
        "difference": paired_difference(bs, cs, resamples=resamples, seed=seed),
        "candidate_closer": sum(1 for x, y in both if y < x),
        "baseline_closer": sum(1 for x, y in both if x < y),
        "equal": sum(1 for x, y in both if x == y),
        "unscored": len(pairs) - len(both),
    }


def agreement_summary(set_name: str, pairs: Sequence[Pair], *, resamples: int, seed: int) -> dict[str, Any]:
    """The agreement part of the ``test`` or ``known`` section: the disagreement overall and
    per category."""
    rows = [(b, c) for b, c in pairs if b["set"] == set_name]
    out: dict[str, Any] = {"disagreement": disagreement_block(rows, resamples=resamples, seed=seed)}
    by_cat: dict[str, list[Pair]] = {}
    for b, c in rows:
        by_cat.setdefault(b["category"] or "(none)", []).append((b, c))
    out["by_category"] = {
        cat: disagreement_block(sel, resamples=resamples, seed=seed)
        for cat, sel in sorted(by_cat.items())
    }
    return out


def qa_summary(name: str, pairs: Sequence[Pair], *, resamples: int, seed: int) -> dict[str, Any]:
    """One QA set: per metric, baseline and candidate accuracy and their paired difference."""
    rows = [(b, c) for b, c in pairs if b["set"] == f"qa:{name}"]
    out: dict[str, Any] = {"n": len(rows), "baseline": {}, "candidate": {}, "difference": {}}
    for m in METRICS:
        bs = [b["qa"][m] for b, _ in rows]
        cs = [c["qa"][m] for _, c in rows]
        out["baseline"][m] = mean_ci(bs, resamples=resamples, seed=seed)
        out["candidate"][m] = mean_ci(cs, resamples=resamples, seed=seed)
        out["difference"][m] = paired_difference(bs, cs, resamples=resamples, seed=seed)
    return out
