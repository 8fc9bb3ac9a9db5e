"""Report building blocks: win/tie/lose counts with unjudged items apart, charts, Markdown."""

from __future__ import annotations

from selflearn.builtin.evaluation.report import (
    judge_markdown,
    outcome_summary,
    outcomes_by_category,
    plot_outcomes,
)
from selflearn.builtin.evaluation.stats import mean_ci
from selflearn.core.evaluation import MeasureRow
from selflearn.core.records import Verdict
from selflearn.core.reporting import plot_before_after, render_report


def _v(qid: str, outcome: str) -> Verdict:
    return Verdict(question_id=qid, outcome=outcome)


def test_rates_are_over_judged_items_and_unjudged_is_counted_apart() -> None:
    verdicts = [_v("a", "win"), _v("b", "win"), _v("c", "tie"), _v("d", "lose"), _v("e", "unjudged")]
    s = outcome_summary(verdicts)
    assert (s["n"], s["judged"], s["unjudged"]) == (5, 4, 1)
    assert (s["win"], s["tie"], s["lose"]) == (2, 1, 1)
    assert (s["win_rate"], s["tie_rate"], s["lose_rate"]) == (0.5, 0.25, 0.25)
    empty = outcome_summary([_v("x", "unjudged")])
    assert empty["judged"] == 0 and empty["win_rate"] is None
    by = outcomes_by_category(verdicts, {"a": "Arts", "b": "Geo", "c": "Geo", "d": None})
    assert by["overall"] == s
    assert set(by["by_category"]) == {"Arts", "Geo", "(none)"}
    assert by["by_category"]["(none)"]["unjudged"] == 1 and by["by_category"]["Geo"]["n"] == 2


def test_charts_are_png() -> None:
    s = outcome_summary([_v("a", "win"), _v("b", "lose")])
    assert plot_outcomes({"all": s}, "t")[:8] == b"\x89PNG\r\n\x1a\n"
    ci = mean_ci([0.2, 0.4, 0.6])
    assert plot_before_after([("panel", [("x", ci, ci)]), ("empty", [])])[:4] == b"\x89PNG"
    assert plot_before_after([])[:4] == b"\x89PNG"


def test_markdown_without_manifest_or_judge() -> None:
    ci = mean_ci([0.1, 0.3, 0.5], seed=1)
    report = {
        "models": {"baseline": "b", "candidate": "c"},
        "params": {"max_new_tokens": 64, "repetition_penalty": 1.1},
    }
    row = MeasureRow("test: disagreement", 3, ci, ci, mean_ci([0, 0, 0]))
    md = render_report(report, rows=[row], sections=["", "## Mine\n\nmy words\n"], manifest=None,
                       datasets_summary=None, images=[("Before", "x.png")])
    assert "(no manifest" in md and "![Before](x.png)" in md
    assert "| test: disagreement | 3 | 0.300 [" in md
    assert "## Mine\n\nmy words\n\n## Figures" in md
    assert "Pairwise judge" not in md


def test_outcomes_chart_shows_unjudged_counts_and_says_when_nothing_was_judged() -> None:
    from selflearn.builtin.evaluation.report import outcomes_figure

    mixed = outcome_summary([_v("a", "win"), _v("b", "lose"), _v("c", "unjudged")])
    none = outcome_summary([_v(q, "unjudged") for q in "xyzuv"])
    fig = outcomes_figure({"test: all": mixed, "known items": none}, "candidate vs baseline")
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["test: all (judged 2, unjudged 1)", "known items (judged 0, unjudged 5)"]
    texts = [t.get_text() for t in ax.texts]
    assert "no item judged: all 5 unjudged" in texts and texts.count("50") == 2


def test_judge_section_counts_unjudged_apart() -> None:
    s = outcome_summary([_v("a", "win"), _v("b", "unjudged")])
    md = judge_markdown({"test": {"overall": s, "by_category": {"Arts": s}}, "known": None, "usage": None})
    assert "| test: all | 2 | 1 | 1 | 1 (100.0%) | 0 (0.0%) | 0 (0.0%) |" in md
    assert "| test: Arts |" in md and "Losing rate" not in md
