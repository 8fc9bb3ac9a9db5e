"""The report across rounds: ``report.md`` (tables) and ``rounds.png`` (plots) at the top of a
run with rounds, from ``rounds.json`` and the rounds' own files.

Three views: what each round kept (pairs), how unknown the held-out questions are to each
model (their S_K distribution), and what every evaluator measured for each round's model
against the model it started from and against the original model.
"""

from __future__ import annotations

import io
from typing import Any

from .store import ArtifactStore

PNG = "rounds.png"


def heldout_scores(store: ArtifactStore, labels: list[str]) -> dict[str, list[float]]:
    """The S_K values of the held-out questions under each model that was probed."""
    from .records import Scores

    out: dict[str, list[float]] = {}
    for label in labels:
        name = f"heldout/{label}/scores.jsonl"
        if store.exists(name):
            out[label] = [float(s.s_k) for s in store.read_records(name, Scores) if s.s_k is not None]
    return out


def measures(summary: dict[str, Any] | None) -> dict[str, float]:
    """An evaluate stage summary flattened to ``name -> number``; QA accuracies also give their
    change (candidate - baseline), since the summary keeps both ends only."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, (bool, int, float)):
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)

    # how the known items were drawn is the sample, not a measure
    walk("", {k: v for k, v in (summary or {}).items() if k != "known_items"})
    for key in [k for k in out if k.endswith(".candidate_contains")]:
        stem = key.removesuffix(".candidate_contains")
        if f"{stem}.baseline_contains" in out:
            out[f"{stem}.change"] = out[key] - out[f"{stem}.baseline_contains"]
    return out


def _changes(m: dict[str, float]) -> dict[str, float]:
    """The before/after changes worth plotting (differences, QA changes, judge wins/losses)."""
    return {k: v for k, v in m.items() if k.endswith((".difference", ".change", "judge.win", "judge.lose"))}


def _stats(values: list[float], tau_k: float | None) -> str:
    if not values:
        return "| 0 | | | |"
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    above = "" if tau_k is None else f"{sum(1 for v in ordered if v > tau_k) / len(ordered):.2f}"
    return f"| {len(ordered)} | {mean:.3f} | {median:.3f} | {above} |"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def render(record: dict[str, Any]) -> str:
    """The Markdown report (``rounds.png`` is linked, not embedded)."""
    rounds = record["per_round"]
    lines = [
        "# Self-training in rounds", "",
        f"{record['completed']} of {record['rounds']} round(s) trained from `{record['original_model']}`; "
        f"passages of later rounds: `{record['passages']}`; a round keeping fewer than "
        f"{record['min_pairs']} DPO pair(s) ends the run.", "",
    ]
    if record.get("stopped"):
        lines += [f"**Stopped:** {record['stopped']}", ""]
    lines += ["## Rounds", "",
              "| round | fresh documents | carried questions | questions | kept pairs | tau_L | tau_K | model |",
              "|---|---|---|---|---|---|---|---|"]
    for e in rounds:
        docs = e.get("documents") or {}
        th = e.get("thresholds") or {}
        lines.append(f"| {e['round']} | {docs.get('fresh', '')} | {docs.get('carried_questions', '')} | "
                     f"{e.get('questions', '')} | {e['kept_pairs']} | {th.get('tau_l', '')} | "
                     f"{th.get('tau_k', '')} | `{e['model']}` |")
    tau_k = ((rounds[0].get("thresholds") or {}).get("tau_k") if rounds else None)
    lines += ["", "## S_K of the held-out questions", "",
              "Round 1's held-out questions, answered and scored by each model (higher: less known).", "",
              f"| model | n | mean | median | share above tau_K={tau_k} |", "|---|---|---|---|---|"]
    for label, values in record["heldout_s_k"].items():
        lines.append(f"| {label} " + _stats(values, tau_k))
    lines += _measure_table(record)
    lines += ["", f"![rounds]({PNG})", "",
              "Each round's own report: " + ", ".join(f"[round {e['round']}](round-{e['round']}/report.md)" for e in rounds),
              ""]
    return "\n".join(lines)


def _measure_table(record: dict[str, Any]) -> list[str]:
    cols: list[tuple[str, dict[str, float]]] = []
    for e in record["per_round"]:
        r = e["round"]
        cols.append((f"round {r} vs round {r - 1}" if r > 1 else "round 1 vs base", measures(e.get("evaluation"))))
        if r > 1 and str(r) in record["vs_base"]:
            cols.append((f"round {r} vs base", measures(record["vs_base"][str(r)])))
    names = sorted({k for _, m in cols for k in m})
    if not names:
        return ["", "## Evaluation", "", "No round was evaluated."]
    lines = ["", "## Evaluation", "",
             "Each evaluator's measures for each round's model (candidate) against the model the "
             "round started from and against the original model (baseline).", "",
             "| measure | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(name)) for _, m in cols) + " |")
    return lines


def plot(record: dict[str, Any]) -> bytes:
    """Kept pairs per round, the held-out S_K distributions, and each change measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    rounds = record["per_round"]
    ax = axes[0]
    from matplotlib.ticker import MaxNLocator

    bars = ax.bar([str(e["round"]) for e in rounds], [e["kept_pairs"] for e in rounds], color="tab:blue")
    ax.bar_label(bars)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("kept DPO pairs")
    ax.set_xlabel("round")
    ax = axes[1]
    held = {k: v for k, v in record["heldout_s_k"].items() if v}
    if held:
        ax.boxplot(list(held.values()), tick_labels=list(held.keys()))
        for i, values in enumerate(held.values(), start=1):  # every question, slightly spread
            spread = [i + 0.15 * ((j % 7) - 3) / 3 for j in range(len(values))]
            ax.plot(spread, values, "o", color="tab:orange", alpha=0.5, markersize=3)
    ax.set_title("S_K of held-out questions (higher: less known)")
    ax.set_ylim(-0.02, 1.02)
    _plot_changes(axes[2], record)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _plot_changes(ax: Any, record: dict[str, Any]) -> None:
    series: list[tuple[str, dict[str, float]]] = []
    for e in record["per_round"]:
        r = e["round"]
        series.append((f"r{r} vs r{r - 1}" if r > 1 else "r1 vs base", _changes(measures(e.get("evaluation")))))
        if r > 1 and str(r) in record["vs_base"]:
            series.append((f"r{r} vs base", _changes(measures(record["vs_base"][str(r)]))))
    names = sorted({k for _, m in series for k in m})
    width = 0.8 / max(1, len(series))
    for i, (label, m) in enumerate(series):
        bars = ax.barh([j + i * width for j in range(len(names))], [m.get(n, 0.0) for n in names],
                       height=width, label=label)
        ax.bar_label(bars, labels=[_fmt(m.get(n)) for n in names], fontsize=6, padding=2)
    ax.set_yticks([j + 0.4 - width / 2 for j in range(len(names))], names, fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    reach = max([abs(v) for _, m in series for v in m.values()] + [0.01]) * 1.35
    ax.set_xlim(-reach, reach)  # symmetric, so a zero change shows where zero is
    ax.set_title("evaluation changes (candidate - baseline)")
    if series and names:
        ax.legend(fontsize=7)


def write_report(store: ArtifactStore, record: dict[str, Any]) -> None:
    store.write_bytes(PNG, plot(record))
    store.write_text("report.md", render(record))
