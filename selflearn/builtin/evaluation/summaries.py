"""The numbers of ``evaluation/report.json``, computed from paired answer rows.

A *pair* is a baseline row and a candidate row for the same (set, question), as returned by
:func:`.answers.pair_answers`. Every mean comes with its 95% bootstrap interval, and every
before/after difference is paired over items (:mod:`.stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .answers import EvalItem
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


def set_summary(set_name: str, pairs: Sequence[Pair], items: Sequence[EvalItem], *,
                agreement: bool, resamples: int, seed: int) -> dict[str, Any]:
    """The ``test`` or ``known`` section: counts, and the disagreement overall and per category."""
    rows = [(b, c) for b, c in pairs if b["set"] == set_name]
    out: dict[str, Any] = {"n": len(rows), "categories": sorted({str(x.category) for x in items})}
    if not agreement:
        return out
    out["disagreement"] = disagreement_block(rows, resamples=resamples, seed=seed)
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


def stage_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short summary the manifest keeps for the stage."""
    out: dict[str, Any] = {"test_questions": report["items"]["test"],
                           "known_items": report["items"]["known"]}
    for set_name in ("test", "known"):
        agr = (report.get(set_name) or {}).get("disagreement")
        if agr:
            out[f"{set_name}_disagreement"] = {
                "baseline": agr["baseline"]["mean"], "candidate": agr["candidate"]["mean"],
                "difference": agr["difference"]["mean"],
            }
    for name, q in (report.get("qa") or {}).items():
        out[f"qa:{name}"] = {"n": q["n"], "baseline_contains": q["baseline"]["contains"]["mean"],
                             "candidate_contains": q["candidate"]["contains"]["mean"]}
    judge = report.get("judge")
    if judge and judge.get("test"):
        s = judge["test"]["overall"]
        out["judge"] = {k: s[k] for k in ("win", "tie", "lose", "unjudged")}
        if judge.get("known"):
            out["judge"]["known_lose_rate"] = judge["known"]["overall"]["lose_rate"]
    if report.get("notes"):
        out["notes"] = report["notes"]
    if report.get("forgetting"):
        out["forgetting_flagged"] = report["forgetting"]["flagged"]
    if report.get("detection"):
        out["detection_auroc"] = {
            set_name: {name: r["auroc"] for name, r in entry["scorers"].items()}
            for set_name, entry in report["detection"]["sets"].items()
        }
    return out
