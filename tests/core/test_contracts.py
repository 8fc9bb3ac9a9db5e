"""The contract tests of ``selflearn.plugins.testing``: every cheap built-in passes them (the
model-backed ones run in tests/backends, tests/scoring, tests/training, tests/sources), and
each check fails on a component that breaks its promise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selflearn.core.evaluation import BaseEvaluator, EvaluationContext, EvaluationResult
from selflearn.core.protocols import BackendCapabilities, ScoreResult
from selflearn.core.records import Completion, Document, Verdict
from selflearn.plugins import hookimpl
from selflearn.plugins.testing import (
    ContractError,
    build_component,
    check_chunker,
    check_evaluator,
    check_inference_backend,
    check_judge,
    check_knowledge_source,
    check_plugin,
    check_question_generator,
    check_scorer,
)

DOC = Document(id="d1", title="Mont Blanc", text=(
    "Mont Blanc rises 4805 metres in the Alps. It lies between France and Italy. "
    "The first ascent was in 1786. Chamonix lies at its foot. Glaciers cover its slopes. ") * 6)


def build(kind: str, value: Any, tmp_path: Path, **config: Any) -> Any:
    return build_component(kind, value, run_dir=tmp_path / "run", **config)


# -- every cheap built-in passes its contract ---------------------------------------------------
def test_builtin_plugins_load_cleanly() -> None:
    from selflearn.builtin import plugin

    for name, obj in plugin.plugins():
        specs = check_plugin(obj, with_builtins=False)
        assert len(specs) == 1, name


def test_files_and_offline_wikipedia_sources(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Alpha is a letter. It comes first.")
    (corpus / "b.md").write_text("# Beta\n\nBeta comes second.")
    docs = check_knowledge_source(build("knowledge_source", {"use": "files", "options": {"url": str(corpus)}}, tmp_path))
    assert len(docs) == 2
    docs = check_knowledge_source(build("knowledge_source", "wikipedia-offline", tmp_path), limit=50)
    assert len(docs) == 50


def test_sentences_chunker_and_question_generators(tmp_path: Path) -> None:
    passages = check_chunker(build("chunker", {"use": "sentences", "options": {"max_tokens": 40}}, tmp_path), DOC)
    assert len(passages) > 2
    check_question_generator(build("question_generator", "template", tmp_path), passages)
    local = build("question_generator", "local", tmp_path, backend="echo")
    check_question_generator(local, passages, per_passage=1, split="test")


def test_echo_backend() -> None:
    from selflearn.builtin.backends.echo import EchoBackend, Options

    assert check_inference_backend(EchoBackend(Options())) == {
        "shape": True, "seed": True, "sample_offset": True, "logprobs": True, "stop": True, "mixed": False}


def test_lexical_scorer_and_local_judge(tmp_path: Path) -> None:
    check_scorer(build("scorer", "lexical", tmp_path))
    check_judge(build("judge", "local", tmp_path, backend="echo"))


@pytest.mark.parametrize("evaluate", [
    {}, {"qa": ["trivia:worldcapitals"], "qa_limit": 3},
    {"qa": ["trivia:worldcapitals"], "qa_limit": 4, "detection": {"k": 2}},
])
def test_builtin_evaluators_through_an_outside_one(tmp_path: Path, evaluate: dict[str, Any]) -> None:
    """The built-in evaluators run beside the contract's evaluator in every configuration."""
    out = check_evaluator("count", plugins=[CountPlugin()], run_dir=tmp_path / "run", evaluate=evaluate)
    report = out["report"]
    assert report["count"] == {"pairs": 2 + 1 + evaluate.get("qa_limit", 0)}
    assert "disagreement" in report["test"] and report["known"]["n"] == 1
    assert (report["detection"] is None) == ("detection" not in evaluate)


@pytest.mark.parametrize(("name", "evaluate", "config"), [
    ("agreement", {}, {}),
    ("qa", {"qa": ["trivia:worldcapitals"], "qa_limit": 3}, {}),
    ("judge", {}, {"judge": "local"}),
    ("detection", {"qa": ["trivia:worldcapitals"], "qa_limit": 4, "detection": {"k": 2}}, {}),
])
def test_builtin_evaluator_contracts(tmp_path: Path, name: str, evaluate: dict[str, Any],
                                     config: dict[str, Any]) -> None:
    """Each built-in evaluator passes check_evaluator. ``forgetting`` is left out here: its
    contract is a real lm-evaluation-harness run on two models, which
    tests/evaluation/test_lm_eval.py makes through the same stage."""
    out = check_evaluator(name, run_dir=tmp_path / "run", evaluate=evaluate, **config)
    assert out["name"] == name and out["report"][{"agreement": "test"}.get(name, name)]


# -- each check catches a broken component -------------------------------------------------------
class CountEvaluator(BaseEvaluator):
    def __init__(self, write: bool = True) -> None:
        self.write = write

    def outputs(self, ctx: EvaluationContext) -> list[str]:
        return ["count.json"]

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        if self.write:
            ctx.write_bytes("count.json", b"{}")
        return EvaluationResult(report={"count": {"pairs": len(ctx.pairs)}}, markdown="## Count\n")


class CountPlugin:
    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register("count", lambda options, ctx: CountEvaluator())
        register("lazy-count", lambda options, ctx: CountEvaluator(write=False))


def test_evaluator_not_writing_its_declared_file_fails(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="did not write the files it declares"):
        check_evaluator("lazy-count", plugins=[CountPlugin()], run_dir=tmp_path / "run")


class ListSource:
    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs

    def documents(self) -> list[Document]:
        return self.docs


def test_source_with_repeated_ids_or_no_text_fails() -> None:
    with pytest.raises(ContractError, match="empty or repeated"):
        check_knowledge_source(ListSource([DOC, DOC]))
    with pytest.raises(ContractError, match="has no text"):
        check_knowledge_source(ListSource([Document(id="x", title="X", text="  ")]))
    with pytest.raises(ContractError, match="no document"):
        check_knowledge_source(ListSource([]))


class OffsetIgnoringBackend:
    """Declares seeds but numbers its samples from 0 whatever sample_offset says."""

    capabilities = BackendCapabilities(seed=True)

    def identity(self) -> dict[str, Any]:
        return {"backend": "bad"}

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> list[list[Completion]]:
        return [[Completion(text=f"sample {j} of {len(str(p))}") for j in range(n)] for p in prompts]

    def close(self) -> None:
        pass


class StopIgnoringBackend(OffsetIgnoringBackend):
    capabilities = BackendCapabilities(seed=False)

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> list[list[Completion]]:
        return [[Completion(text="one two three four five") for _ in range(n)] for _ in prompts]


class NoLogprobsBackend(StopIgnoringBackend):
    capabilities = BackendCapabilities(logprobs=True)


def _cut(text: str, stops: Any) -> str:
    return text[: min([text.find(s) for s in stops if s and s in text], default=len(text))]


class MixedWithoutMethod(OffsetIgnoringBackend):
    capabilities = BackendCapabilities(mixed=True)

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> list[list[Completion]]:
        return [[Completion(text=_cut("alpha beta gamma delta epsilon", params.stop)) for _ in range(n)] for _ in prompts]


class MixedOtherwise(MixedWithoutMethod):
    """Declares seeds and mixing, but answers a mixed call with other texts."""

    capabilities = BackendCapabilities(mixed=True, seed=True)

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> list[list[Completion]]:
        return [[Completion(text=_cut(f"alpha {sample_offset + j} gamma delta epsilon", params.stop)) for j in range(n)]
                for _ in prompts]

    def generate_mixed(self, prompts: Any, parts: Any) -> list[list[list[Completion]]]:
        return [[[Completion(text="mixed") for _ in range(n)] for _ in prompts] for _, n in parts]


def test_backend_breaking_offsets_stop_or_logprobs_fails() -> None:
    with pytest.raises(ContractError, match="sample_offset=1"):
        check_inference_backend(OffsetIgnoringBackend())
    with pytest.raises(ContractError, match="stop string 'ee' appears"):
        check_inference_backend(StopIgnoringBackend())
    with pytest.raises(ContractError, match="no per-token log-probabilities"):
        check_inference_backend(NoLogprobsBackend())
    with pytest.raises(ContractError, match="declares mixed=True but has no generate_mixed"):
        check_inference_backend(MixedWithoutMethod())
    with pytest.raises(ContractError, match="generate_mixed gave other texts"):
        check_inference_backend(MixedOtherwise())


class OutOfRangeScorer:
    def identity(self) -> dict[str, Any]:
        return {"scorer": "bad"}

    def score(self, items: Any) -> list[ScoreResult]:
        return [ScoreResult(score=1.5, sample_scores=[0.0] * len(x.samples)) for x in items]


class MisalignedScorer(OutOfRangeScorer):
    def score(self, items: Any) -> list[ScoreResult]:
        return [ScoreResult(score=0.5, sample_scores=[0.5]) for x in items]


def test_scorer_out_of_range_or_misaligned_fails() -> None:
    with pytest.raises(ContractError, match="score 1.5 is not in"):
        check_scorer(OutOfRangeScorer())
    with pytest.raises(ContractError, match="1 sample scores for 3 samples"):
        check_scorer(MisalignedScorer())


class OneOrderJudge:
    """Asks only one order and calls position A the winner in both fields: always 'win'."""

    def identity(self) -> dict[str, Any]:
        return {"judge": "one-order"}

    def judge(self, items: Any) -> list[Verdict]:
        return [Verdict(question_id=x.question_id, outcome="win", first="candidate", second="candidate")
                for x in items]


def test_judge_asking_one_order_fails() -> None:
    with pytest.raises(ContractError, match="not its mirror"):
        check_judge(OneOrderJudge())


def test_misspelt_plugin_fails_check_plugin() -> None:
    class Typo:
        @hookimpl
        def register_scorer(self, register: Any) -> None:
            register("x", "m:f")

    with pytest.raises(ContractError, match="register_scorer"):
        check_plugin(Typo())
