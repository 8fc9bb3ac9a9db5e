"""The built-in evaluators' report pieces: win/tie/lose tables and chart, and the Markdown
sections of the judge, forgetting and knowledge-detection measures (the frame of report.md and
the before/after chart are the stage's: :mod:`selflearn.core.reporting`).

Rates are over *judged* items (the paper's convention, method.md 13.2); items the judge could
not be parsed for are counted apart as ``unjudged`` and never silently dropped. Charts are
rendered with matplotlib's Agg backend into PNG bytes, which the stage writes atomically
through the artifact store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...core.records import Verdict
from ...core.reporting import figure_bytes as _figure_bytes
from ...core.reporting import fmt
from ...core.reporting import pyplot as _pyplot

OUTCOMES = ("win", "tie", "lose")


def outcome_summary(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Counts of win/tie/lose/unjudged and the rates over judged items."""
    counts = {k: 0 for k in (*OUTCOMES, "unjudged")}
    for v in verdicts:
        counts[v.outcome if v.outcome in counts else "unjudged"] += 1
    judged = sum(counts[k] for k in OUTCOMES)
    out: dict[str, Any] = {"n": len(verdicts), "judged": judged, **counts}
    for k in OUTCOMES:
        out[f"{k}_rate"] = counts[k] / judged if judged else None
    return out


def outcomes_by_category(
    verdicts: Sequence[Verdict], category_of: Mapping[str, str | None]
) -> dict[str, Any]:
    """``{"overall": summary, "by_category": {category: summary}}``."""
    groups: dict[str, list[Verdict]] = {}
    for v in verdicts:
        groups.setdefault(category_of.get(v.question_id) or "(none)", []).append(v)
    return {
        "overall": outcome_summary(verdicts),
        "by_category": {c: outcome_summary(vs) for c, vs in sorted(groups.items())},
    }


# -- charts --------------------------------------------------------------------------------
def plot_outcomes(groups: Mapping[str, Mapping[str, Any]], title: str) -> bytes:
    """Horizontal stacked bars of win/tie/lose rates, one bar per group (label -> summary)."""
    return _figure_bytes(outcomes_figure(groups, title))


def outcomes_figure(groups: Mapping[str, Mapping[str, Any]], title: str) -> Any:
    """The figure of :func:`plot_outcomes`. Each label gives the judged and unjudged counts; a
    group with no judged item says so across its bar instead of leaving it empty."""
    plt = _pyplot()
    labels = [f"{name} (judged {s['judged']}, unjudged {s.get('unjudged', 0)})" for name, s in groups.items()]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(labels) + 1.6))
    colors = {"win": "#3a923a", "tie": "#c0c0c0", "lose": "#c23b22"}
    left = [0.0] * len(labels)
    for outcome in OUTCOMES:
        widths = [100.0 * (s.get(f"{outcome}_rate") or 0.0) for s in groups.values()]
        ax.barh(labels, widths, left=left, color=colors[outcome], label=outcome)
        for i, w in enumerate(widths):
            if w >= 6:
                ax.text(left[i] + w / 2, i, f"{w:.0f}", ha="center", va="center", fontsize=8)
        left = [a + b for a, b in zip(left, widths, strict=False)]
    for i, s in enumerate(groups.values()):
        if not s["judged"]:
            ax.text(50, i, f"no item judged: all {s.get('n', s.get('unjudged', 0))} unjudged",
                    ha="center", va="center", fontsize=9, color="#7a1f12")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("% of judged items (unjudged counted apart)")
    ax.set_title(title)
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    return fig


# -- Markdown ------------------------------------------------------------------------------
def judge_markdown(judge: Mapping[str, Any]) -> str:
    """report.md's pairwise judge section: win/tie/lose overall, per category, known items."""
    lines = ["## Pairwise judge (both orders; tie = the orders disagree)", ""]
    lines += ["| items | n | judged | unjudged | win | tie | lose |", "|---|---|---|---|---|---|---|"]
    rows = [("test: all", judge["test"]["overall"])]
    rows += [(f"test: {c}", s) for c, s in judge["test"]["by_category"].items()]
    if judge.get("known"):
        rows.append(("known training items", judge["known"]["overall"]))
    for label, s in rows:
        lines.append(
            f"| {label} | {s['n']} | {s['judged']} | {s['unjudged']} | "
            + " | ".join(f"{s[k]} ({fmt(s[f'{k}_rate'], True)})" for k in OUTCOMES)
            + " |"
        )
    if judge.get("known"):
        lines.append("")
        lines.append(f"Losing rate on known items: {fmt(judge['known']['overall']['lose_rate'], True)}")
    if judge.get("usage"):
        u = judge["usage"]
        lines.append("")
        lines.append(
            f"Judge calls made by this run (cached ones are free): {int(u.get('requests', 0))}, tokens {int(u.get('prompt_tokens', 0))} in / "
            f"{int(u.get('completion_tokens', 0))} out, estimated cost ${float(u.get('cost_usd', 0.0)):.4f}"
        )
    return "\n".join(lines) + "\n"


def forgetting_markdown(forgetting: Mapping[str, Any]) -> str:
    """report.md's forgetting section: each lm-eval task before/after, flagged drops."""
    lines = [f"## Forgetting (lm-evaluation-harness; flagged: drop > {forgetting['margin']})", ""]
    lines += ["| task | shots | metric | before | after | delta | flagged |", "|---|---|---|---|---|---|---|"]
    for task, r in forgetting["tasks"].items():
        lines.append(
            f"| {task} | {r['n_shot']} | {r['metric']} | {fmt(r['before'])} | {fmt(r['after'])} "
            f"| {r['delta']:+.3f} | {'**yes**' if r['flagged'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def detection_markdown(detection: Mapping[str, Any]) -> str:
    """report.md's knowledge-detection section: AUROC of S_K per QA set and scorer."""
    lines = [
        f"## Knowledge detection (baseline model, K = {detection['k']}, wrong = {detection['metric']} 0)",
        "",
        "AUROC of S_K (greedy closed-book answer against K closed-book samples, no gold answer) "
        "for predicting that the greedy answer is wrong; 0.5 is chance.",
        "",
        "| QA set | n | wrong | scorer | AUROC | 95% interval |",
        "|---|---|---|---|---|---|",
    ]
    for set_name, entry in detection["sets"].items():
        for scorer, r in entry["scorers"].items():
            ci = ("-" if r["ci_low"] is None else f"{r['ci_low']:.3f} to {r['ci_high']:.3f}")
            lines.append(f"| {set_name} | {entry['n']} | {fmt(entry['wrong_rate'], True)} | {scorer} "
                         f"| {fmt(r['auroc'])} | {ci} |")
    return "\n".join(lines) + "\n"
