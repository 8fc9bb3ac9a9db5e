"""The evaluation reports: win/tie/lose tables, before/after figures with their spread, PNG
charts and the run-level Markdown summary.

Rates are over *judged* items (the paper's convention, method.md 13.2); items the judge could
not be parsed for are counted apart as ``unjudged`` and never silently dropped. Charts are
rendered with matplotlib's Agg backend into PNG bytes, which the stage writes atomically
through the artifact store.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from ...core.records import Verdict

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
def _figure_bytes(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


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


def plot_before_after(panels: Sequence[tuple[str, Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]]]) -> bytes:
    """Grouped bars with 95% CI error bars: per panel (title, [(label, baseline_ci,
    candidate_ci), ...]) where each ci is a :func:`~.stats.mean_ci` result."""
    plt = _pyplot()
    panels = [p for p in panels if p[1]]
    if not panels:
        panels = [("no figures", [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels, strict=False):
        xs = list(range(len(rows)))
        for offset, side, color in ((-0.2, "baseline", "#7a8fb3"), (0.2, "candidate", "#e08a2c")):
            cis = [r[1] if side == "baseline" else r[2] for r in rows]
            means = [float(ci.get("mean") or 0.0) for ci in cis]
            lo = [m - float(ci["ci_low"]) if ci.get("ci_low") is not None else 0.0
                  for m, ci in zip(means, cis, strict=True)]
            hi = [float(ci["ci_high"]) - m if ci.get("ci_high") is not None else 0.0
                  for m, ci in zip(means, cis, strict=True)]
            ax.bar([x + offset for x in xs], means, width=0.4, color=color,
                   yerr=[lo, hi], capsize=3, label=side)
        ax.set_xticks(xs)
        ax.set_xticklabels([r[0] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _figure_bytes(fig)


# -- Markdown ------------------------------------------------------------------------------
def fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.3f}"
    return str(value)


def fmt_ci(ci: Mapping[str, Any] | None, pct: bool = False) -> str:
    """``mean [low, high]`` (or ``mean ± stderr`` when no interval)."""
    if not ci or ci.get("mean") is None:
        return "n/a"
    if ci.get("ci_low") is not None:
        return f"{fmt(ci['mean'], pct)} [{fmt(ci['ci_low'], pct)}, {fmt(ci['ci_high'], pct)}]"
    return fmt(ci["mean"], pct)


#: nested summary entries that are counts worth showing (others, such as component identities,
#: usage details and score statistics, stay in manifest.json and datasets_summary.json)
_COUNT_GROUPS = ("by_split", "removed", "rows", "final_loss", "passages_without_question")


def _count_rows(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The counts of one stage summary: top-level numbers and the known count groups."""
    rows: list[tuple[str, Any]] = []
    for key, value in summary.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            rows.append((str(key), value))
        elif key in _COUNT_GROUPS and isinstance(value, Mapping):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    rows.append((f"{key}.{sub}", v))
    return rows


def stage_counts_markdown(manifest: Mapping[str, Any] | None, datasets: Any) -> list[str]:
    """The counts after every stage and filter (and each stage's wall time), from the manifest.

    The filters' counts come from datasets_summary.json when the manifest has no datasets
    entry (a datasets stage run by another tool).
    """
    lines = ["## Counts after every stage and filter", ""]
    stages = dict((manifest or {}).get("stages", {}))
    if datasets and "datasets" not in stages:
        stages["datasets"] = {"summary": datasets}
    if not stages:
        return [*lines, "(no manifest: the earlier stages' summaries are not available)", ""]
    lines += ["| stage | count | value |", "|---|---|---|"]
    for name, entry in stages.items():
        if name == "evaluate":
            continue
        for key, value in _count_rows(entry.get("summary", {})):
            lines.append(f"| {name} | {key} | {fmt(value)} |")
        if entry.get("seconds") is not None:
            lines.append(f"| {name} | wall time (s) | {fmt(float(entry['seconds']))} |")
    return [*lines, ""]


def notes_markdown(report: Mapping[str, Any], manifest: Mapping[str, Any] | None, datasets: Any) -> list[str]:
    """The notes of every stage (a filter that removed or kept nothing, an empty evaluation
    pool), first in the report: a zero in a table is easy to miss."""
    notes: list[tuple[str, str]] = []
    stages = dict((manifest or {}).get("stages", {}))
    if isinstance(datasets, Mapping) and "datasets" not in stages:
        stages["datasets"] = {"summary": datasets}
    for name, entry in stages.items():
        if name != "evaluate":
            notes += [(name, str(n)) for n in (entry.get("summary") or {}).get("notes") or []]
    notes += [("evaluate", str(n)) for n in report.get("notes") or []]
    if not notes:
        return []
    return ["## Notes", "", *(f"- **{stage}**: {text}" for stage, text in notes), ""]


def render_markdown(
    report: Mapping[str, Any],
    *,
    manifest: Mapping[str, Any] | None,
    datasets_summary: Any,
    images: Sequence[tuple[str, str]],
) -> str:
    """The run-level ``report.md``: what was compared, the counts of every stage, the
    before/after figures with their 95% intervals, the judge's verdicts and the charts."""
    models = report["models"]
    lines = [
        "# Self-training run report",
        "",
        f"- baseline: `{models['baseline']}`",
        f"- candidate (after training): `{models['candidate']}`",
        f"- answers: greedy, no passage, repetition penalty {report['params']['repetition_penalty']}, "
        f"at most {report['params']['max_new_tokens']} new tokens",
        "",
    ]
    lines += notes_markdown(report, manifest, datasets_summary)
    lines += stage_counts_markdown(manifest, datasets_summary)
    lines += ["## Before / after (95% bootstrap intervals)", ""]
    lines += ["| measure | items | baseline | candidate | difference (candidate - baseline) |",
              "|---|---|---|---|---|"]
    for set_name in ("test", "known"):
        agr = (report.get(set_name) or {}).get("disagreement")
        if agr:
            lines.append(
                f"| {set_name}: disagreement with the passage-grounded reference (lower is better) "
                f"| {agr['difference']['n']} | {fmt_ci(agr['baseline'])} | {fmt_ci(agr['candidate'])} "
                f"| {fmt_ci(agr['difference'])} |"
            )
    for name, qa in (report.get("qa") or {}).items():
        for metric in ("contains", "exact", "f1"):
            lines.append(
                f"| QA {name}: {metric} | {qa['n']} | {fmt_ci(qa['baseline'][metric], True)} "
                f"| {fmt_ci(qa['candidate'][metric], True)} | {fmt_ci(qa['difference'][metric], True)} |"
            )
    lines.append("")
    judge = report.get("judge")
    if judge:
        lines += ["## Pairwise judge (both orders; tie = the orders disagree)", ""]
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
        lines.append("")
    forgetting = report.get("forgetting")
    if forgetting:
        lines += [f"## Forgetting (lm-evaluation-harness; flagged: drop > {forgetting['margin']})", ""]
        lines += ["| task | shots | metric | before | after | delta | flagged |", "|---|---|---|---|---|---|---|"]
        for task, r in forgetting["tasks"].items():
            lines.append(
                f"| {task} | {r['n_shot']} | {r['metric']} | {fmt(r['before'])} | {fmt(r['after'])} "
                f"| {r['delta']:+.3f} | {'**yes**' if r['flagged'] else 'no'} |"
            )
        lines.append("")
    detection = report.get("detection")
    if detection:
        lines += [
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
        lines.append("")
    if images:
        lines += ["## Figures", ""]
        for title, path in images:
            lines += [f"### {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
