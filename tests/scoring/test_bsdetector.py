"""``bsdetector``: NLI entailment consistency plus self-reflection through a backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from selflearn.builtin.scorers import bsdetector, nli
from selflearn.builtin.scorers._nli import NLIEngine
from selflearn.core.protocols import BackendCapabilities, GenerationParams, ScoreItem
from selflearn.core.records import Completion

Q = "Where is the Eiffel Tower?"
REF = "The Eiffel Tower is in Paris. It was completed in 1889."
SAMPLES = ["It is in Paris, France.", "The tower stands in Rome, Italy.", "", "I do not know where it is."]


class ReflectingBackend:
    """Answers reflection prompts by the proposed answer's content; records every prompt."""

    capabilities = BackendCapabilities()

    def __init__(self) -> None:
        self.prompts: list[Any] = []
        self.params: list[GenerationParams] = []

    def identity(self) -> dict[str, Any]:
        return {"backend": "reflecting"}

    def generate(
        self, prompts: Sequence[Any], params: GenerationParams, *, n: int = 1, sample_offset: int = 0
    ) -> list[list[Completion]]:
        self.prompts += list(prompts)
        self.params.append(params)
        out = []
        for p in prompts:
            answer = p[-1]["content"].split("Proposed answer:", 1)[1].split("\n\n", 1)[0]
            reply = "(A)" if "Paris" in answer else "B. Incorrect" if "Rome" in answer else "I am not sure"
            out.append([Completion(text=reply)] * n)
        return out

    def close(self) -> None:
        pass


def engine(model: str) -> NLIEngine:
    return NLIEngine(model, device="cpu")


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("A", "A"), ("(B)", "B"), ("Answer: C", "C"), ("B. Incorrect", "B"), (" A)", "A"),
        ("I am not sure", None), ("a", None), ("Absolutely", None), ("CAB", None),
        ("A correct answer", "A"), ("Correct.", "A"), ("incorrect", "B"), ("Unsure", "C"),
        ("The answer is B", "B"), ("", None), ("I think (C)", "C"), ("Not correct", None),
    ],
)
def test_parse_reflection(reply: str, letter: str | None) -> None:
    assert bsdetector.parse_reflection(reply) == letter


def test_consistency_only_equals_one_minus_entailment(nli2_model: str) -> None:
    """beta = 1: no backend needed; on a 2-class head P(entail) = 1 - P(contradiction), so the
    score equals selfcheck-nli's."""
    scorer = bsdetector.BSDetector(bsdetector.Options(beta=1.0), engine(nli2_model), None)
    selfcheck = nli.SelfCheckNLI(nli.Options(), engine(nli2_model))
    ours = scorer.score([ScoreItem(REF, SAMPLES, question=Q)])[0]
    theirs = selfcheck.score([ScoreItem(REF, SAMPLES, question=Q)])[0]
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    assert ours.sample_scores == pytest.approx(theirs.sample_scores, abs=1e-6)  # type: ignore[arg-type]
    assert "reflection_backend" not in scorer.identity()


@pytest.mark.parametrize("scope", ["reference", "all"])
def test_reflection_combination(nli2_model: str, scope: str) -> None:
    backend = ReflectingBackend()
    opts = bsdetector.Options(beta=0.6, reflection_scope=scope)  # type: ignore[arg-type]
    scorer = bsdetector.BSDetector(opts, engine(nli2_model), lambda: backend)
    base = bsdetector.BSDetector(bsdetector.Options(beta=1.0), engine(nli2_model), None)
    result = scorer.score([ScoreItem(REF, SAMPLES, question=Q), ScoreItem("", ["x"], question=Q)])
    o_k = [None if s is None else 1 - s for s in base.score([ScoreItem(REF, SAMPLES, question=Q)])[0].sample_scores]
    r = {0: 1.0, 1: 0.0, 3: 0.5}  # Paris -> A, Rome -> B, "do not know" -> unparsed -> 0.5
    for k, got in enumerate(result[0].sample_scores):
        if k == 2:
            assert got is None
        else:
            assert got == pytest.approx(1 - (0.6 * o_k[k] + 0.4 * r[k]))  # type: ignore[operator]
    o = sum(v for v in o_k if v is not None) / 3
    s_ref = 1.0  # the reference mentions Paris
    s = s_ref if scope == "reference" else (s_ref + 1.0 + 0.0 + 0.5) / 4
    assert result[0].score == pytest.approx(1 - (0.6 * o + 0.4 * s))
    assert result[1].score is None
    # one batched call: the reference and the 3 non-empty samples, greedy and short
    assert len(backend.prompts) == 4 and len(backend.params) == 1
    assert backend.params[0].greedy and backend.params[0].max_new_tokens == 5
    assert Q in backend.prompts[0][-1]["content"]
    assert scorer.unparsed == 1
    assert scorer.identity()["reflection_backend"] == {"backend": "reflecting"}


def test_reflection_needs_a_backend(nli2_model: str) -> None:
    from selflearn.core.errors import ConfigError

    scorer = bsdetector.BSDetector(bsdetector.Options(beta=0.5), engine(nli2_model), None)
    with pytest.raises(ConfigError, match="beta: 1.0"):
        scorer.score([ScoreItem(REF, SAMPLES, question=Q)])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        bsdetector.BSDetector(bsdetector.Options(beta=1.5), engine(nli2_model), None)
