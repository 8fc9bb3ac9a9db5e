"""Knowledge detection quality: does S_K predict that the model's closed-book answer is wrong?

The knowledge filter keeps questions with a high S_K, on the claim that a high contradiction
between the greedy answer and the model's own samples means the model does not know the answer.
On questions with gold answers that claim can be checked without any judge: the model answers
greedily (y*) and samples K answers (Y_r), both closed-book; S_K = the scorer's mean
contradiction of y* with Y_r is computed **without** the gold answer; the label is whether y*
is wrong against the gold aliases (``contains`` = 0, :mod:`.qa`). The AUROC of S_K for that
label is the probability that a random wrong answer gets a higher S_K than a random right one:
0.5 is chance, 1.0 a perfect detector.

Here y* is the closed-book greedy answer, not the passage-grounded one of training (QA sets
have no passage): this measures the self-consistency signal that S_K is made of, on the same
model, with the same scorer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from ...core.options import bounded
from .stats import percentile_interval


@attrs.frozen
class DetectionOptions:
    #: closed-book samples per question (the paper's K)
    k: int = bounded(10, ge=1, le=10_000)
    #: sampling temperature of the K samples (the paper: 1.0)
    temperature: float = bounded(1.0, ge=0)
    #: nucleus of the K samples
    top_p: float = bounded(0.9, gt=0, le=1)
    #: most new tokens per sample (None: evaluate.max_new_tokens)
    max_new_tokens: int | None = bounded(None, ge=1, le=1_000_000)
    #: QA metric whose 0 marks a wrong answer ("contains", "exact"; "f1" counts F1 < 0.5)
    metric: str = "contains"
    #: other scorers to compare with the configured one on the same answers (names or
    #: {use, options} mappings)
    scorers: list[str | dict[str, Any]] = attrs.field(factory=list)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for the positive ``labels`` (ties count half).

    Rank-based (Mann-Whitney U), exact with ties; None when either class is empty.
    """
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length: {len(scores)} vs {len(labels)}")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid = (i + j) / 2.0 + 1.0  # average 1-based rank of the tie group
        for t in range(i, j + 1):
            ranks[order[t]] = mid
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def auroc_ci(
    scores: Sequence[float], labels: Sequence[bool], *, resamples: int = 1000, seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """``{"auroc", "ci_low", "ci_high", "n", "positives"}``: a percentile bootstrap over items."""
    n = len(scores)
    out: dict[str, Any] = {"auroc": auroc(scores, labels), "ci_low": None, "ci_high": None,
                           "n": n, "positives": sum(1 for y in labels if y), "level": level}
    if out["auroc"] is None or resamples <= 0:
        return out
    rng = random.Random(seed)
    values: list[float] = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        a = auroc([scores[i] for i in idx], [labels[i] for i in idx])
        if a is not None:
            values.append(a)
    if len(values) >= 2:
        out["ci_low"], out["ci_high"] = percentile_interval(values, level)
    return out


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) points, thresholds from high to low."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return []
    points = [(0.0, 0.0)]
    tp = fp = 0
    pairs = sorted(zip(scores, labels, strict=True), key=lambda t: -t[0])
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            tp += int(pairs[j][1])
            fp += int(not pairs[j][1])
            j += 1
        points.append((fp / neg, tp / pos))
        i = j
    return points


def is_wrong(qa: dict[str, float], metric: str) -> bool:
    """Whether a scored answer counts as wrong under ``metric``."""
    value = qa[metric]
    return value < 0.5 if metric == "f1" else value == 0.0


def _scored(rows: Sequence[dict[str, Any]], name: str) -> tuple[list[float], list[bool]]:
    """The S_K values of one scorer and the matching "wrong" labels (unscored rows left out)."""
    have = [(r["s_k"][name], bool(r["wrong"])) for r in rows if r["s_k"].get(name) is not None]
    return [s for s, _ in have], [y for _, y in have]


def summarize(rows: Sequence[dict[str, Any]], scorer_names: Sequence[str], *, resamples: int,
              seed: int) -> dict[str, Any]:
    """Per QA set and scorer: the AUROC of S_K for "the greedy answer is wrong"."""
    out: dict[str, Any] = {}
    for set_name in sorted({r["set"] for r in rows}):
        sel = [r for r in rows if r["set"] == set_name]
        wrong = sum(1 for r in sel if r["wrong"])
        entry: dict[str, Any] = {"n": len(sel), "wrong_rate": wrong / len(sel) if sel else None,
                                 "scorers": {}}
        for name in scorer_names:
            entry["scorers"][name] = auroc_ci(*_scored(sel, name), resamples=resamples, seed=seed)
        out[set_name] = entry
    return out


def plot_roc(rows: Sequence[dict[str, Any]], scorer_names: Sequence[str]) -> bytes:
    """PNG: one ROC panel per QA set, one curve per scorer."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in rows})
    fig, axes = plt.subplots(1, max(1, len(sets)), figsize=(4.2 * max(1, len(sets)), 4), squeeze=False)
    for ax, set_name in zip(axes[0], sets, strict=False):
        sel = [r for r in rows if r["set"] == set_name]
        drawn = 0
        for name in scorer_names:
            scores, labels = _scored(sel, name)
            pts = roc_curve(scores, labels)
            if pts:
                a = auroc(scores, labels)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{name} (AUROC {a:.2f})")
                drawn += 1
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{set_name} (n={len(sel)})", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (wrong answers found)")
        if drawn:
            ax.legend(fontsize=7, loc="lower right")
        else:  # say why the panel is empty rather than leave a blank square
            ax.text(0.5, 0.5, "no curve: the scored answers here are\nall right, all wrong or none", ha="center",
                    va="center", fontsize=8, transform=ax.transAxes)
    fig.suptitle("S_K as a detector of wrong closed-book answers", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
