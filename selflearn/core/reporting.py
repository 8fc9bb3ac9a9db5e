"""The run-level report: report.md's frame (what was compared, the counts of every stage, the
before/after table, the evaluators' sections, the figures) and the before/after chart.

The figures themselves come from the evaluators (:mod:`selflearn.core.evaluation`); charts are
rendered with matplotlib's Agg backend (imported only when a chart is drawn) into PNG bytes,
which the stage writes atomically through the artifact store.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from .evaluation import MeasureRow, PanelRow


def figure_bytes(fig: Any) -> bytes:
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


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_before_after(panels: Sequence[tuple[str, Sequence[PanelRow]]]) -> bytes:
    """Grouped bars with 95% CI error bars: per panel (title, [(label, baseline_ci,
    candidate_ci), ...]) where each ci is a ``mean_ci``-style mapping (mean, ci_low, ci_high)."""
    plt = pyplot()
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
    return figure_bytes(fig)


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


def render_report(
    report: Mapping[str, Any],
    *,
    rows: Sequence[MeasureRow],
    sections: Sequence[str],
    manifest: Mapping[str, Any] | None,
    datasets_summary: Any,
    images: Sequence[tuple[str, str]],
) -> str:
    """The run-level ``report.md``: what was compared, the notes and counts of every stage, the
    before/after table (``rows``, with their 95% intervals), the evaluators' ``sections``
    and the figures."""
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
    for r in rows:
        lines.append(
            f"| {r.measure} | {r.n} | {fmt_ci(r.baseline, r.percent)} | {fmt_ci(r.candidate, r.percent)} "
            f"| {fmt_ci(r.difference, r.percent)} |"
        )
    lines.append("")
    for section in sections:
        if section.strip():
            lines += [*section.rstrip("\n").split("\n"), ""]
    if images:
        lines += ["## Figures", ""]
        for title, path in images:
            lines += [f"### {title}", "", f"![{title}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
