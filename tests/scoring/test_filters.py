"""The filters and the pair choice on hand-made score tables (pure Python, no model).

The expected outcomes below are written from the definitions (method.md 7.3, 7.4, 9.2, 9.4),
not computed by the code under test: keep S_L <= tau_L and S_K > tau_K; rejected = the Y_r
sample with the highest per-sample score.
"""

from __future__ import annotations

import math

import pytest

from selflearn.core.records import Completion
from selflearn.core.stages._filters import (
    FilterConfig,
    decide,
    multiple_pairs,
    no_passage_pairs,
    rejected_candidates,
    single_pair,
    trim_to_sentence,
)

ON = FilterConfig(tau_l=0.5, tau_k=0.5)

# (S_L, S_K, expected with both filters on, consistency only, knowledge only, both off)
TABLE = [
    (0.10, 0.90, "kept", "kept", "kept", "kept"),
    (0.50, 0.51, "kept", "kept", "kept", "kept"),  # S_L == tau_L is kept (<=)
    (0.50, 0.50, "knowledge", "kept", "knowledge", "kept"),  # S_K == tau_K is removed (>)
    (0.51, 0.90, "consistency", "consistency", "kept", "kept"),
    (0.90, 0.10, "consistency", "consistency", "knowledge", "kept"),
    (0.20, 0.20, "knowledge", "kept", "knowledge", "kept"),
    (None, 0.90, "s_l_missing", "s_l_missing", "kept", "kept"),
    (0.20, None, "s_k_missing", "kept", "s_k_missing", "kept"),
    (None, None, "s_l_missing", "s_l_missing", "s_k_missing", "kept"),
    (math.nan, 0.9, "s_l_missing", "s_l_missing", "kept", "kept"),
    (0.0, 1.0, "kept", "kept", "kept", "kept"),
]


@pytest.mark.parametrize(("s_l", "s_k", "both", "cons_only", "know_only", "off"), TABLE)
def test_decide_table(s_l: float | None, s_k: float | None, both: str, cons_only: str, know_only: str, off: str) -> None:
    assert decide(s_l, s_k, ON) == both
    assert decide(s_l, s_k, FilterConfig(knowledge=False)) == cons_only
    assert decide(s_l, s_k, FilterConfig(consistency=False)) == know_only
    assert decide(s_l, s_k, FilterConfig(consistency=False, knowledge=False)) == off


def test_tau_k_zero_keeps_the_consistency_filter() -> None:
    """The research code dropped the consistency filter when tau_K was 0; we do not."""
    cfg = FilterConfig(tau_l=0.5, tau_k=0.0)
    assert decide(0.9, 0.3, cfg) == "consistency"
    assert decide(0.1, 0.3, cfg) == "kept"
    assert decide(0.1, 0.0, cfg) == "knowledge"


def test_thresholds_sweep_counts() -> None:
    """Raising tau_K keeps fewer questions, and exactly those with S_K above it."""
    s_k = [0.05, 0.3, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.95]
    for tau, expected in ((0.5, 8), (0.6, 6), (0.7, 4), (0.8, 2)):
        cfg = FilterConfig(tau_k=tau)
        assert sum(decide(0.0, s, cfg) == "kept" for s in s_k) == expected


def c(text: str, finish: str = "stop") -> Completion:
    return Completion(text=text, finish_reason=finish)


REF = c("Paris is the capital of France.")


def test_single_pair_takes_the_most_contradicting_sample() -> None:
    yr = [c("Lyon."), c("Rome is the capital."), c("Paris."), c("Berlin.")]
    pair = single_pair(REF, yr, [0.2, 0.9, 0.1, 0.7])
    assert pair is not None
    chosen, rejected = pair
    assert chosen.text == REF.text and chosen.source == "reference"
    assert rejected.text == "Rome is the capital." and rejected.source == "without_passage[1]"
    assert rejected.score == 0.9


def test_single_pair_ties_none_empty_and_equal_text() -> None:
    yr = [c("A."), c("B."), c(""), c(REF.text), c("C.")]
    # tie between 0 and 1 -> lower index; empty sample and one equal to y* are never rejected
    pair = single_pair(REF, yr, [0.8, 0.8, 1.0, 1.0, None])
    assert pair is not None and pair[1].source == "without_passage[0]"
    assert single_pair(REF, [c("x"), c("")], [None, 0.9]) is None
    assert single_pair(c("  "), [c("x")], [0.9]) is None


def test_truncated_samples_policies() -> None:
    yr = [c("Rome is the capital. It has", "length"), c("Lyon is.", "stop")]
    scores = [0.9, 0.6]
    dropped = single_pair(REF, yr, scores, "drop")
    assert dropped is not None and dropped[1].text == "Lyon is."
    trimmed = single_pair(REF, yr, scores, "trim")
    assert trimmed is not None and trimmed[1].text == "Rome is the capital." and trimmed[1].trimmed
    kept = single_pair(REF, yr, scores, "keep")
    assert kept is not None and kept[1].text == "Rome is the capital. It has"
    assert kept[1].finish_reason == "length" and not kept[1].trimmed
    # a truncated sample without a complete sentence is dropped even when trimming
    assert single_pair(REF, [c("Rome is", "length")], [0.9], "trim") is None
    assert trim_to_sentence('He said "yes." Then') == 'He said "yes."'


def test_rejected_candidates_order_and_min_score() -> None:
    yr = [c("a."), c("b."), c("c."), c("d.")]
    cands = rejected_candidates(REF.text, yr, [0.3, 0.9, 0.6, 0.5], min_score=0.5)
    assert [x.text for x in cands] == ["b.", "c."]  # 0.5 is not > 0.5


def test_multiple_pairs_follow_the_definition() -> None:
    yc = [c("Paris."), c("It is Paris."), c("Lyon."), c("Paris, France.")]
    yc_scores = [0.30, 0.10, 0.80, 0.45]
    yr = [c("Rome."), c("Berlin."), c("Madrid."), c("Paris!"), c("Oslo.")]
    yr_scores = [0.95, 0.40, 0.70, 0.20, 0.85]
    pairs = multiple_pairs(REF, yc, yc_scores, yr, yr_scores, ON, max_pairs=4)
    # chosen: y*, then Y_c with score <= 0.5 ascending: "It is Paris." (0.10), "Paris." (0.30),
    # "Paris, France." (0.45); rejected: Y_r with score > 0.5 descending: Rome, Oslo, Madrid
    assert [(a.text, b.text) for a, b in pairs] == [
        (REF.text, "Rome."),
        ("It is Paris.", "Oslo."),
        ("Paris.", "Madrid."),
    ]
    assert pairs[0] == single_pair(REF, yr, yr_scores)
    assert len(multiple_pairs(REF, yc, yc_scores, yr, yr_scores, ON, max_pairs=2)) == 2
    # knowledge filter off: no per-sample threshold on Y_r, so 4 pairs
    off = multiple_pairs(REF, yc, yc_scores, yr, yr_scores, FilterConfig(knowledge=False), max_pairs=4)
    assert [b.text for _, b in off] == ["Rome.", "Oslo.", "Madrid.", "Berlin."]
    # consistency filter off: "Lyon." (0.80) becomes a chosen candidate, but 3 Y_r pass tau_K
    off_c = multiple_pairs(REF, yc, yc_scores, yr, yr_scores, FilterConfig(consistency=False), max_pairs=5)
    assert [a.text for a, _ in off_c] == [REF.text, "It is Paris.", "Paris."]  # 3 rejected only


def test_no_passage_pairs() -> None:
    yr = [c("Paris."), c("Rome."), c("Paris, France."), c("Lyon.")]
    mutual = [0.2, 0.9, 0.1, 0.6]
    pairs = no_passage_pairs(yr, mutual)
    assert [(a.text, b.text) for a, b in pairs] == [("Paris, France.", "Rome.")]
    two = no_passage_pairs(yr, mutual, max_pairs=2)
    assert [(a.text, b.text) for a, b in two] == [("Paris, France.", "Rome."), ("Paris.", "Lyon.")]
    assert no_passage_pairs([c("x."), c("y.")], [0.5, 0.5]) == []  # no preference without a gap
    assert no_passage_pairs([c("x.")], [0.5]) == []
