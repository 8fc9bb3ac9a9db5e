"""``semantic-entropy``: bidirectional-entailment clusters and entropy over them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from selflearn.builtin.scorers import semantic_entropy as se
from selflearn.builtin.scorers._nli import NLIEngine
from selflearn.core.protocols import ScoreItem


class KeyedNLI:
    """A fake 3-class NLI engine: the 'meaning' of a text is its last word; a text ending in
    '~' is *entailed by* others of that meaning but does not entail them (one-way only)."""

    labels = {"contradiction": 0, "neutral": 1, "entailment": 2}

    def __init__(self) -> None:
        self.calls: list[int] = []

    def identity(self) -> dict[str, Any]:
        return {"nli_model": "keyed"}

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        self.calls.append(len(pairs))
        out = []
        for premise, hyp in pairs:
            same = premise.rstrip("~").split()[-1] == hyp.rstrip("~").split()[-1]
            if same and not premise.endswith("~"):
                out.append([0.1, 0.2, 0.7])
            elif same:
                out.append([0.1, 0.6, 0.3])  # neutral: a one-way entailment
            else:
                out.append([0.8, 0.1, 0.1])
        return out

    def close(self) -> None:
        pass


def scorer(**kw: Any) -> se.SemanticEntropy:
    return se.SemanticEntropy(se.Options(**kw), KeyedNLI())  # type: ignore[arg-type]


def test_counts_entropy_and_per_sample() -> None:
    item = ScoreItem("It is Paris", ["Paris", "in Paris", "Rome", "Lyon", ""], question="Where?")
    r = scorer().score([item])[0]
    # clusters over samples: {Paris, in Paris}, {Rome}, {Lyon}: p = 1/2, 1/4, 1/4 over N = 4
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert r.score == pytest.approx(h / math.log(4))
    assert r.sample_scores == pytest.approx([0.0, 0.0, 0.5 + 0.125, 0.5 + 0.125, None])  # type: ignore[arg-type]
    # without the reference: 1 - p(cluster)
    r2 = scorer(include_reference=False).score([item])[0]
    assert r2.score == pytest.approx(h / math.log(4))
    assert r2.sample_scores == pytest.approx([0.5, 0.5, 0.75, 0.75, None])  # type: ignore[arg-type]


def test_one_way_entailment_is_not_the_same_meaning() -> None:
    item = ScoreItem("Paris", ["Paris", "Paris~"], question="Where?")
    r = scorer().score([item])[0]
    assert r.score == pytest.approx(1.0)  # two clusters of one sample each, N = 2
    assert r.sample_scores == pytest.approx([0.0, 0.75])  # type: ignore[arg-type]


def test_logprob_masses() -> None:
    lps = [[-0.1, -0.1], [-2.0], [-0.5, -0.5, -0.5]]
    item = ScoreItem("Paris", ["Paris", "Rome", "in Paris"], question="Q", sample_logprobs=lps)  # type: ignore[arg-type]
    r = scorer().score([item])[0]
    paris = math.log(math.exp(-0.1) + math.exp(-0.5))
    rome = -2.0
    z = math.log(math.exp(paris) + math.exp(rome))
    p = [math.exp(paris - z), math.exp(rome - z)]
    h = -sum(x * math.log(x) for x in p)
    assert r.score == pytest.approx(h / math.log(3))
    assert r.sample_scores[1] == pytest.approx(0.5 + 0.5 * p[1])
    # a sample without log-probabilities: counts for every sample of the item
    partial = ScoreItem("Paris", ["Paris", "Rome"], question="Q", sample_logprobs=[[-0.1], None])
    assert scorer().score([partial])[0].score == pytest.approx(1.0)


def test_batched_rounds_and_edge_cases() -> None:
    s = scorer()
    items = [
        ScoreItem("Paris", ["Paris", "Paris"], question="Q"),  # one cluster: entropy 0
        ScoreItem("", ["Rome"], question="Q"),  # no reference: no score
        ScoreItem("Rome", ["", " "], question="Q"),  # no sample: no score
        ScoreItem("Rome", ["Rome"], question="Q"),  # N = 1: entropy 0
    ]
    results = s.score(items)
    assert results[0].score == 0.0 and results[0].sample_scores == [0.0, 0.0]
    assert results[1].score is None and results[2].score is None
    assert results[3].score == 0.0
    assert len(s.engine.calls) <= 2  # one call per answer position, all items together  # type: ignore[attr-defined]


def test_with_question_prefix_and_real_tiny_model(nli3_model: str) -> None:
    eng = NLIEngine(nli3_model, device="cpu")
    real = se.SemanticEntropy(se.Options(model=nli3_model), eng)
    item = ScoreItem("The tower is in Paris.", ["It is in Paris.", "It is in Rome.", "Paris."], question="Where?")
    r = real.score([item])[0]
    assert r.score is not None and 0.0 <= r.score <= 1.0
    assert all(v is not None and 0.0 <= v <= 1.0 for v in r.sample_scores)
    assert eng.computed > 0
    assert real._text("Where?", " Paris ") == "Where? Paris"
    assert se.SemanticEntropy(se.Options(with_question=False), KeyedNLI())._text("Q", "A") == "A"  # type: ignore[arg-type]
