"""QA metrics on hand-made cases, and the two loaders on the real package files."""

from __future__ import annotations

import pytest

from selflearn.builtin.evaluation.loaders import check_qa_name, load_qa, package_dir
from selflearn.builtin.evaluation.qa import (
    contains_match,
    exact_match,
    normalize_answer,
    score_answer,
    token_f1,
)
from selflearn.builtin.evaluation.stats import mean_ci, paired_difference
from selflearn.core.errors import ConfigError


def test_normalisation() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("“Paris”") == "paris"
    assert normalize_answer("Theatre") == "theatre"  # "the" only as a whole word


@pytest.mark.parametrize(
    ("answer", "golds", "exact", "f1", "contains"),
    [
        ("Paris", ["Paris"], 1.0, 1.0, 1.0),
        ("the paris.", ["Paris"], 1.0, 1.0, 1.0),
        ("The capital of France is Paris.", ["Paris"], 0.0, 2 * (1 / 5) * 1 / (1 / 5 + 1), 1.0),  # 5 tokens
        ("Rome", ["Paris"], 0.0, 0.0, 0.0),
        ("It is more like it", ["Ore"], 0.0, 0.0, 0.0),  # no substring match inside "more"
        ("Monty Python", ["Monty Python and the Holy Grail", "Monty Python"], 1.0, 1.0, 1.0),
        ("Helium gas", ["Hydrogen", "Helium"], 0.0, 2 * 0.5 * 1 / 1.5, 1.0),
        ("", ["Paris"], 0.0, 0.0, 0.0),
        ("anything", ["The"], 0.0, 0.0, 0.0),  # an alias that normalises to nothing never matches
        ("61.6 inches", ["61.6"], 0.0, 0.8, 1.0),  # "61 6 inches" vs "61 6"
    ],
)
def test_metrics(answer: str, golds: list[str], exact: float, f1: float, contains: float) -> None:
    assert exact_match(answer, golds) == exact
    assert token_f1(answer, golds) == pytest.approx(f1)
    assert contains_match(answer, golds) == contains
    assert score_answer(answer, golds) == pytest.approx({"exact": exact, "f1": f1, "contains": contains})


def test_mean_ci_and_paired_difference() -> None:
    ci = mean_ci([0, 1, 1, 1], resamples=500, seed=1)
    assert ci["mean"] == 0.75 and ci["n"] == 4
    assert 0.0 <= ci["ci_low"] <= 0.75 <= ci["ci_high"] <= 1.0
    assert ci["stderr"] == pytest.approx((0.25 / 4) ** 0.5)
    assert mean_ci([0.3])["ci_low"] is None and mean_ci([])["mean"] is None
    assert mean_ci([1, 0, None, 1], seed=2)["n"] == 3
    same = paired_difference([0.5, 0.2, 0.9], [0.5, 0.2, 0.9])
    assert same["mean"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    diff = paired_difference([0.8, 0.7, 0.9, 0.6], [0.2, 0.3, 0.1, 0.4], seed=3)
    assert diff["mean"] == pytest.approx(-0.5) and diff["ci_high"] < 0
    assert mean_ci([0, 1, 0, 1], seed=5) == mean_ci([0, 1, 0, 1], seed=5)  # seeded


def test_fanoutqa_dev_single_hop_subquestions() -> None:
    items, skipped = load_qa("fanoutqa")
    assert len(items) > 1000
    assert all(it.answers and isinstance(it.answers[0], str) and it.question for it in items)
    assert len({it.id for it in items}) == len(items)
    assert skipped["list_answer"] > 0 and skipped["duplicate"] > 0
    burrell = [it for it in items if it.question == "What is the batting hand of Pat Burrell?"]
    assert burrell and burrell[0].answers == ["Right"] and burrell[0].category == "Sports"
    assert burrell[0].metadata["evidence_title"] == "Pat Burrell"


def test_trivia_lists() -> None:
    general, _ = load_qa("trivia")
    assert len(general) > 100 and all(it.source == "trivia:general" for it in general)
    muscovite = [it for it in general if it.question.startswith("A Muscovite")]
    assert muscovite and muscovite[0].answers == ["Moscow"]
    assert not any(it.question == "AUTHOR" for it in general)
    two, _ = load_qa("trivia:worldcapitals,elements")
    assert {it.category for it in two} == {"worldcapitals", "elements"}
    assert all(it.answers for it in two)
    everything, _ = load_qa("trivia:all")
    assert len(everything) > len(two) + len(general)


def test_loader_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="unknown QA set 'squad'"):
        load_qa("squad")
    with pytest.raises(ConfigError, match="unknown trivia list"):
        check_qa_name("trivia:nope", "evaluate.qa[0]")
    with pytest.raises(ConfigError, match=r"pip install --no-deps not-a-package"):
        package_dir("not_a_package_xyz", "not-a-package")
    check_qa_name("fanoutqa")
    check_qa_name("trivia:general,worldcapitals")
