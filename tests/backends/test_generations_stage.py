"""The ``generations`` stage: y*, Y_c and Y_r per question through the cached backend; re-runs,
growing K and resuming after a kill."""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import pytest

from selflearn import Pipeline
from selflearn.builtin.backends.echo import EchoBackend
from selflearn.builtin.backends.echo import Options as EchoOptions
from selflearn.core.errors import StageError
from selflearn.core.records import Generations, Passage, Question
from tests.backends.helpers import CountingBackend

PASSAGES = [
    Passage(id=f"p{i}", document_id=f"d{i}", index=0, title=f"Doc {i}",
            text=f"Topic {i} is a subject of study number {i}. It has many facets and a long history.")
    for i in range(5)
]
QUESTIONS = [
    Question(id=f"q{i}", passage_id=f"p{i % 5}", document_id=f"d{i % 5}", text=f"What is topic {i % 5} about, variant {i}?")
    for i in range(7)
] + [Question(id="t0", passage_id="p0", document_id="d0", text="A test question?", split="test")]


def pipeline(run_dir: str, backend: Any, **generations: Any) -> Pipeline:
    cfg: dict[str, Any] = {"run_dir": run_dir, "backend": backend, "seed": 42}
    if generations:
        cfg["generations"] = generations
    pipe = Pipeline(cfg, load_entry_points=False)
    if not pipe.store.exists("questions.jsonl"):
        pipe.store.write_records("passages.jsonl", PASSAGES)
        pipe.store.write_records("questions.jsonl", QUESTIONS)
    return pipe


def run_stage(run_dir: str, backend: Any, **generations: Any) -> tuple[list[Generations], dict[str, Any]]:
    pipe = pipeline(run_dir, backend, **generations)
    try:
        summary = pipe.stage("generations").run()
    finally:
        pipe.close()
    return pipe.store.read_records("generations.jsonl", Generations), summary


def rows(records: list[Generations]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_dict().items() if k != "provenance"} for r in records]


class RecordingEcho(EchoBackend):
    def __init__(self) -> None:
        super().__init__(EchoOptions())
        self.seen: list[tuple[Any, dict[str, Any], int]] = []

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> Any:
        self.seen += [(p, params.to_dict(), n) for p in prompts]
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)


def test_reference_and_k_samples_with_and_without_the_passage(run_dir: str) -> None:
    echo = RecordingEcho()
    records, summary = run_stage(run_dir, echo, k=3)
    assert [r.question_id for r in records] == [f"q{i}" for i in range(7)]  # training split only
    for r, q in zip(records, QUESTIONS[:7], strict=True):
        assert r.reference.text and r.reference.finish_reason == "stop"
        assert len(r.with_passage) == 3 and len(r.without_passage) == 3
        assert len({c.text for c in r.with_passage}) > 1
        assert r.provenance["passage_id"] == q.passage_id
        assert r.provenance["backend"] == {"backend": "echo", "model": "echo"}
    by_params = {}
    for prompt, params, n in echo.seen:
        by_params.setdefault((params["temperature"], params["top_p"], n), []).append(prompt)
    # the paper's parameters: greedy y*, Y_c at T=0.7 with the passage, Y_r at T=1.0 without
    ref, yc, yr = by_params[(0.0, 1.0, 1)], by_params[(0.7, 0.9, 3)], by_params[(1.0, 0.9, 3)]
    assert len(ref) == len(yc) == len(yr) == 7
    for i, q in enumerate(QUESTIONS[:7]):
        passage = PASSAGES[int(q.passage_id[1:])].text
        assert ref[i] == yc[i] and passage in ref[i][0]["content"] and q.text in ref[i][0]["content"]
        assert yr[i] == [{"role": "user", "content": q.text}]
    params = records[0].provenance["params"]
    assert params["reference"]["repetition_penalty"] == 1.1 and params["reference"]["max_new_tokens"] == 384
    assert params["with_passage"]["seed"] == 42 and params["reference"]["seed"] is None
    assert summary["questions"] == 7 and summary["generations"] == 7 * 7
    assert summary["backend_generations"] == 49 and summary["cached_generations"] == 0


def test_second_run_makes_no_backend_call_and_k_grows_incrementally(run_dir: str) -> None:
    first = CountingBackend(EchoBackend(EchoOptions()))
    records, _ = run_stage(run_dir, first, k=2)
    assert first.completions == 7 * (1 + 2 + 2)
    again = CountingBackend(EchoBackend(EchoOptions()))
    records2, summary = run_stage(run_dir, again, k=2)
    assert again.completions == 0 and again.calls == []
    assert summary["backend_generations"] == 0 and summary["cached_generations"] == 35
    assert rows(records2) == rows(records)
    more = CountingBackend(EchoBackend(EchoOptions()))
    grown, _ = run_stage(run_dir, more, k=4)
    assert more.completions == 7 * (2 + 2)  # only samples 2 and 3, with and without the passage
    assert {offset for _, _, offset in more.calls} == {2}
    for old, new in zip(records, grown, strict=True):
        assert new.with_passage[:2] == old.with_passage and new.without_passage[:2] == old.without_passage
        assert len(new.with_passage) == 4 and new.reference == old.reference


class SlowGreedy(EchoBackend):
    """An echo backend whose greedy calls take 0.2 s each (a GPU pass of few rows)."""

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> Any:
        if params.greedy:
            time.sleep(0.2)
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)


def test_the_summary_says_where_the_backend_time_went(run_dir: str) -> None:
    _, summary = run_stage(run_dir, SlowGreedy(EchoOptions()), k=2, chunk_size=4)
    calls = summary["execution"]["call_seconds"]  # 2 chunks of 4 and 3 questions
    assert calls["reference"] >= 0.4 and max(calls["with_passage"], calls["without_passage"]) < calls["reference"] / 2
    _, again = run_stage(run_dir, SlowGreedy(EchoOptions()), k=2, chunk_size=4)
    assert again["execution"]["call_seconds"] == {"reference": 0, "with_passage": 0, "without_passage": 0,
                                                  "reference+with_passage": 0}


class MixingEcho(RecordingEcho):
    """An echo backend that also answers several parameter sets in one call (MixedBackend):
    one generate call per set, recorded as one mixed call."""

    def __init__(self, mixed: bool = True) -> None:
        super().__init__()
        self.capabilities = attrs.evolve(self.capabilities, mixed=mixed)
        self.mixed: list[tuple[int, list[int]]] = []

    def generate_mixed(self, prompts: Any, parts: Any) -> Any:
        self.mixed.append((len(prompts), [n for _, n in parts]))
        time.sleep(0.05)
        return [self.generate(prompts, params, n=n) for params, n in parts]


def test_a_mixing_backend_answers_y_star_and_y_c_in_one_call(run_dir: str, tmp_path: Any) -> None:
    from selflearn.plugins import MixedBackend

    mixing = MixingEcho()
    assert isinstance(mixing, MixedBackend) and not isinstance(RecordingEcho(), MixedBackend)
    records, summary = run_stage(run_dir, mixing, k=3, chunk_size=4)
    plain, _ = run_stage(str(tmp_path / "plain"), RecordingEcho(), k=3, chunk_size=4)
    assert rows(records) == rows(plain)  # the same records either way
    assert mixing.mixed == [(4, [1, 3]), (3, [1, 3])]  # one call per chunk: y* and Y_c together
    calls = summary["execution"]["call_seconds"]
    assert calls["reference+with_passage"] >= 0.1 and calls["reference"] == calls["with_passage"] == 0
    assert summary["backend_generations"] == 7 * 7
    # K grows: the prompts whose samples are partly cached are asked per parameter set
    more = MixingEcho()
    grown, summary = run_stage(run_dir, more, k=4, chunk_size=4)
    assert more.mixed == [] and summary["backend_generations"] == 7 * 2
    assert [r.with_passage[:3] for r in grown] == [r.with_passage for r in records]
    # a backend that has generate_mixed but does not say it is worth asking for
    unmixed = MixingEcho(mixed=False)
    run_stage(str(tmp_path / "unmixed"), unmixed, k=3, chunk_size=4)
    assert unmixed.mixed == [] and len(unmixed.seen) == 7 * 3


def test_per_call_options_and_estimate(run_dir: str) -> None:
    pipe = pipeline(run_dir, "echo", k=5, with_passage={"temperature": 1.0, "k": 0},
                    without_passage={"max_new_tokens": 7, "stop": ["."]}, logprobs=True)
    stage = pipe.stage("generations")
    est = stage.estimate()
    assert est["questions"] == 7 and est["generations"] == 7 * (1 + 0 + 5)
    params = stage.params()
    assert params["with_passage"].temperature == 1.0 and params["with_passage"].top_p == 0.9
    assert params["without_passage"].stop == (".",) and params["without_passage"].max_new_tokens == 7
    summary = stage.run()
    pipe.close()
    records = pipe.store.read_records("generations.jsonl", Generations)
    assert records[0].with_passage == [] and len(records[0].without_passage) == 5
    assert records[0].without_passage[0].logprobs is not None
    assert summary["k"] == {"with_passage": 0, "without_passage": 5}


def test_bad_inputs_are_clear_errors(run_dir: str) -> None:
    pipe = pipeline(run_dir, "echo")
    pipe.store.write_records("questions.jsonl", [Question(id="x", passage_id="nope", document_id="d", text="?")])
    with pytest.raises(StageError, match="nope"):
        pipe.stage("generations").run()
    pipe.store.write_records("questions.jsonl", [])
    with pytest.raises(StageError, match="no question"):
        pipe.stage("generations").run()
    pipe.close()


@pytest.mark.parametrize("use_hf", [False, True], ids=["echo", "hf"])
def test_a_killed_run_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path: Any, tiny_llama: str, use_hf: bool) -> None:
    def make_backend() -> Any:
        if use_hf:
            from selflearn.builtin.backends.hf import HFBackend
            from selflearn.builtin.backends.hf import Options as HFOptions

            return HFBackend(HFOptions(batch_size=8), tiny_llama, seed=42)
        return EchoBackend(EchoOptions())

    opts = {"k": 3, "chunk_size": 3}
    if use_hf:
        small = {"max_new_tokens": 6}
        opts.update(reference=small, with_passage=small, without_passage=small)
    clean, _ = run_stage(str(tmp_path / "clean"), make_backend(), **opts)
    killed_dir = str(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_stage(killed_dir, CountingBackend(make_backend(), fail_after_calls=4), **opts)
    assert not os.path.exists(os.path.join(killed_dir, "generations.jsonl"))
    resumed_backend = CountingBackend(make_backend())
    resumed, _ = run_stage(killed_dir, resumed_backend, **opts)
    assert rows(resumed) == rows(clean)
    # the first chunk (3 calls) and the reference call of the second were kept
    total = 7 * (1 + 3 + 3)
    assert resumed_backend.completions == total - 3 * 7 - 3


def test_hf_backend_through_the_registry(run_dir: str, tiny_llama: str) -> None:
    small = {"max_new_tokens": 5}
    backend = {"use": "hf", "options": {"model": tiny_llama, "batch_size": 8}}
    records, summary = run_stage(run_dir, backend, k=2, reference=small, with_passage=small,
                                 without_passage=small, logprobs=True)
    assert len(records) == 7
    for r in records:
        assert len(r.with_passage) == 2 and len(r.without_passage) == 2
        for c in (r.reference, *r.with_passage, *r.without_passage):
            assert c.completion_tokens <= 5 and c.logprobs is not None and len(c.logprobs) == c.completion_tokens
        assert r.with_passage[0].prompt_tokens > r.without_passage[0].prompt_tokens  # passage in context
    assert records[0].provenance["backend"]["backend"] == "hf"
    assert summary["completion_tokens"] > 0
    _, again = run_stage(run_dir, backend, k=2, reference=small, with_passage=small,
                         without_passage=small, logprobs=True)
    assert again["backend_generations"] == 0


# -- a server that does not do what was asked (issue 22) -----------------------------------------


def _openai(url: str, **options: Any) -> dict[str, Any]:
    return {"use": "openai", "options": {"base_url": url + "/v1", "model": "test-model", "backoff": 0.01,
                                         "max_n": 1, "seeded_samples": True, **options}}


def test_sample_diversity_in_the_summary(run_dir: str) -> None:
    records, summary = run_stage(run_dir, "echo", k=3)
    assert "notes" not in summary
    div = summary["sample_diversity"]
    assert div["with_passage"] == {"questions": 7, "all_identical": 0.0, "all_equal_reference": 0.0, "sampled": True}
    assert div["without_passage"]["questions"] == 7 and div["without_passage"]["all_identical"] == 0.0
    # Y_r decoded greedily on purpose: K identical samples by design, reported but not flagged
    _, summary = run_stage(os.path.join(run_dir, "greedy"), "echo", k=3, without_passage={"temperature": 0})
    div = summary["sample_diversity"]["without_passage"]
    assert div["all_identical"] == 1.0 and div["sampled"] is False and "notes" not in summary


def test_a_server_that_ignores_temperature_is_flagged(run_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    """`transformers serve` on a model whose generation config does not sample: every Y_c
    sample is y*, every Y_r sample the same greedy answer. A warning names the likely cause;
    in strict mode the stage stops before writing anything."""
    from tests.server_kinds import server_kind
    from tests.servers import FakeServer

    with FakeServer(server_kind("transformers-serve", do_sample=False)) as server:
        with caplog.at_level("WARNING", logger="selflearn"):
            _, summary = run_stage(run_dir, _openai(server.url), k=3)
        div = summary["sample_diversity"]
        assert div["with_passage"] == {"questions": 7, "all_identical": 1.0, "all_equal_reference": 1.0,
                                       "sampled": True}
        assert div["without_passage"]["all_identical"] == 1.0
        assert div["without_passage"]["all_equal_reference"] == 0.0
        warning = " ".join(r.getMessage() for r in caplog.records)
        assert "transformers serve" in warning and "do_sample" in warning and "max_identical_share" in warning
        (note,) = summary["notes"]  # report.md lists it first
        assert note.startswith("generations: 100% of the 7 questions") and "do_sample" in note

        strict = os.path.join(run_dir, "strict")
        pipe = Pipeline({"run_dir": strict, "backend": _openai(server.url), "generations": {"k": 3},
                         "plugins": {"strict": True}}, load_entry_points=False)
        pipe.store.write_records("passages.jsonl", PASSAGES)
        pipe.store.write_records("questions.jsonl", QUESTIONS)
        with pytest.raises(StageError, match=r"strict mode") as err:
            pipe.stage("generations").run()
        pipe.close()
        assert "100% of the 7 questions" in str(err.value) and server.url in str(err.value)
        assert not pipe.store.exists("generations.jsonl")
        # a higher threshold accepts the same answers (1.0: never flagged)
        _, summary = run_stage(strict, _openai(server.url), k=3, max_identical_share=1.0)
        assert summary["sample_diversity"]["with_passage"]["all_identical"] == 1.0


def test_logprobs_asked_for_and_never_returned_is_an_error(run_dir: str) -> None:
    from tests.server_kinds import server_kind
    from tests.servers import FakeServer

    kind = [server_kind("transformers-serve")]
    with FakeServer(lambda path, body: kind[0](path, body)) as server:
        with pytest.raises(StageError, match=r"generations.logprobs is true, but the backend") as err:
            run_stage(run_dir, _openai(server.url), k=2, logprobs=True)
        assert server.url in str(err.value) and "generations.logprobs: false" in str(err.value)
        assert not os.path.exists(os.path.join(run_dir, "generations.jsonl"))
        # the same server upgraded to one that returns them: the cached answers without
        # log-probabilities are asked again, not reused
        kind[0] = server_kind("vllm")
        asked = len(server.requests)
        records, summary = run_stage(run_dir, _openai(server.url), k=2, logprobs=True)
        assert len(server.requests) - asked == 7 * 5  # y*, 2 Y_c, 2 Y_r per question, one by one
    assert summary["missing_logprobs"] == 0
    assert all(c.logprobs for r in records for c in (r.reference, *r.with_passage, *r.without_passage))
