"""The ``scores`` and ``datasets`` stages on hand-made run directories.

Generations carry their per-sample score in their text ("... [0.9]"), and a table scorer reads
it back, so every S_L, S_K and pair below is known in advance from the definitions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import ConfigError, StageError
from selflearn.core.protocols import BackendCapabilities, GenerationParams, ScoreItem, ScoreResult
from selflearn.core.records import (
    Completion,
    Generations,
    Passage,
    PreferencePair,
    Question,
    Scores,
    SFTExample,
)

_SCORE = re.compile(r"\[([0-9.]+)\]")


class TableScorer:
    """Per-sample score = the number in brackets in the sample's text; item = their mean."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def identity(self) -> dict[str, Any]:
        return {"scorer": "table"}

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        self.calls.append(len(items))
        out = []
        for item in items:
            per: list[float | None] = []
            for s in item.samples:
                m = _SCORE.search(s)
                per.append(float(m.group(1)) if m and item.reference.strip() else None)
            present = [p for p in per if p is not None]
            out.append(ScoreResult(sum(present) / len(present) if present else None, per))
        return out


def s(text: str, score: float, finish: str = "stop") -> Completion:
    return Completion(text=f"{text} [{score}]", finish_reason=finish)


# question id -> (reference, Y_c, Y_r); see the expectations in test_datasets_defaults
TABLE: dict[str, tuple[Completion, list[Completion], list[Completion]]] = {
    "q1": (Completion("Paris is the capital."), [s("Paris", 0.1), s("Paris!", 0.2)],
           [s("Lyon", 0.6), s("Rome", 0.9), s("Berlin is the capital. It has", 0.95, "length")]),
    "q2": (Completion("Canberra."), [s("Sydney", 0.7), s("Perth", 0.8)], [s("Sydney", 0.9), s("Perth", 0.9)]),
    "q3": (Completion("1889."), [s("1889", 0.1)], [s("1889", 0.2), s("In 1889", 0.4)]),
    "q4": (Completion("Jane Austen."), [s("Austen", 0.5)], [s("Dickens", 0.6)]),
    "q5": (Completion("A long answer that", "length"), [s("x", 0.1)], [s("y", 0.9)]),
    "q8": (Completion("Mercury."), [s("Mercury", 0.0)], [s("Mars and", 0.9, "length"), s("Venus and", 0.8, "length")]),
}
QUESTIONS = ["q1", "q2", "q3", "q4", "q5", "q6", "q8"]  # q6 has no generations


def setup_run(run_dir: str, **config: Any) -> Pipeline:
    config.setdefault("scorer", TableScorer())
    pipe = Pipeline(run_dir=run_dir, load_entry_points=False, **config)
    passages = [
        Passage(id=f"p-{q}", document_id=f"d-{q}", index=0, title=f"T {q}", text=f"Passage text of {q}.")
        for q in QUESTIONS + ["q7"]
    ]
    questions = [
        Question(id=q, passage_id=f"p-{q}", document_id=f"d-{q}", text=f"Question {q}?") for q in QUESTIONS
    ] + [Question(id="q7", passage_id="p-q7", document_id="d-q7", text="Test?", split="test")]
    gens = [
        Generations(question_id=q, reference=ref, with_passage=yc, without_passage=yr,
                    provenance={"passage_id": f"p-{q}", "document_id": f"d-{q}", "k": {"with_passage": 2}})
        for q, (ref, yc, yr) in TABLE.items()
    ]
    pipe.store.write_records("passages.jsonl", passages)
    pipe.store.write_records("questions.jsonl", questions)
    pipe.store.write_records("generations.jsonl", gens)
    return pipe


def run_stages(pipe: Pipeline, *names: str) -> list[dict[str, Any]]:
    out = []
    for name in names:
        stage = pipe.stage(name)
        stage.validate()
        out.append(stage.run())
        for f in stage.outputs():
            assert pipe.store.exists(f), f
    return out


def test_scores_stage(run_dir: str) -> None:
    scorer = TableScorer()
    pipe = setup_run(run_dir, scorer=scorer)
    (summary,) = run_stages(pipe, "scores")
    assert scorer.calls == [2 * len(TABLE)]  # every item of the stage in one call
    recs = {r.question_id: r for r in pipe.store.read_records("scores.jsonl", Scores)}
    assert set(recs) == set(TABLE)
    q1 = recs["q1"]
    assert q1.s_l == pytest.approx(0.15) and q1.s_k == pytest.approx((0.6 + 0.9 + 0.95) / 3)
    assert q1.consistency_samples == [0.1, 0.2] and q1.knowledge_samples == [0.6, 0.9, 0.95]
    assert q1.provenance == {"scorer": {"scorer": "table"}, "passage_id": "p-q1", "document_id": "d-q1"}
    assert summary["questions"] == 6 and summary["s_k"]["count"] == 6
    assert summary["s_l"]["max"] == pytest.approx(0.75)


def test_scores_stage_no_passage_and_consistency_off(run_dir: str) -> None:
    scorer = TableScorer()
    pipe = setup_run(run_dir, scorer=scorer, scores={"no_passage": True, "consistency": False})
    run_stages(pipe, "scores")
    recs = {r.question_id: r for r in pipe.store.read_records("scores.jsonl", Scores)}
    assert recs["q1"].s_l is None and recs["q1"].consistency_samples == []
    mutual = recs["q1"].provenance["no_passage"]
    # sample j against the others: the mean of the others' bracketed scores
    assert mutual["sample_scores"] == pytest.approx([(0.9 + 0.95) / 2, (0.6 + 0.95) / 2, (0.6 + 0.9) / 2])
    assert mutual["score"] == pytest.approx(sum(mutual["sample_scores"]) / 3)
    assert scorer.calls == [sum(1 + len(yr) for _, _, yr in TABLE.values())]


def test_scores_stage_rejects_misaligned_scorer(run_dir: str) -> None:
    class Broken(TableScorer):
        def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
            return [ScoreResult(0.5, []) for _ in items]

    pipe = setup_run(run_dir, scorer=Broken())
    with pytest.raises(StageError, match="sample_scores must align"):
        pipe.stage("scores").run()


def test_datasets_defaults(run_dir: str) -> None:
    import datasets
    import pyarrow.parquet as pq

    pipe = setup_run(run_dir)
    _, summary = run_stages(pipe, "scores", "datasets")
    pairs = pipe.store.read_records("dpo_pairs.jsonl", PreferencePair)
    # kept: q1 (S_L 0.15, S_K 0.82) and q4 (S_L = 0.5 = tau_L, S_K 0.6)
    assert [(p.question_id, p.rejected) for p in pairs] == [("q1", "Rome [0.9]"), ("q4", "Dickens [0.6]")]
    assert pairs[0].prompt == "Question q1?" and pairs[0].chosen == "Paris is the capital."
    assert summary["removed"] == {
        "consistency": 1, "knowledge": 1, "no_generations": 1,
        "no_rejected_candidate": 1, "reference_truncated": 1,
    }
    assert summary["questions"] == 7 and summary["kept_questions"] == 2 and summary["dpo_pairs"] == 2
    assert summary["would_fail"] == {"consistency": 1, "knowledge": 1}
    assert summary["thresholds"] == {"tau_l": 0.5, "tau_k": 0.5, "consistency_filter": True, "knowledge_filter": True}
    assert summary["scorer"] == {"scorer": "table"}
    assert summary["truncated_samples"]["without_passage_finish_reasons"] == {"stop": 8, "length": 3}
    for p in pairs:
        prov = p.provenance
        for key in ("passage_id", "document_id", "s_l", "s_k", "knowledge_samples", "consistency_samples",
                    "thresholds", "scorer", "rejected_score", "rejected_source"):
            assert key in prov, key
    assert pairs[0].provenance["rejected_source"] == "without_passage[1]"
    assert pairs[0].provenance["passage_id"] == "p-q1" and pairs[0].provenance["document_id"] == "d-q1"
    # SFT: floor(7 / 3) = 2 reading-comprehension rows (minus questions without a usable y*)
    sft = pipe.store.read_records("sft.jsonl", SFTExample)
    assert summary["sft"]["rc_questions"] == 2 and len(sft) + sum(summary["sft"]["rc_skipped"].values()) == 2
    for row in sft:
        assert row.origin == "rc" and f"Passage text of {row.question_id}." in row.prompt
        assert row.prompt.rstrip().endswith(f"Question {row.question_id}?")
        assert row.completion == TABLE[row.question_id][0].text
        assert row.provenance["passage_id"] == f"p-{row.question_id}" and "s_k" in row.provenance
    assert summary["sft"]["self_label"] == "off"  # no sft_trainer configured
    # exports
    table = pq.read_table(pipe.store.local_path("dpo_pairs.parquet"))
    assert table.num_rows == 2 and table.column("rejected").to_pylist() == ["Rome [0.9]", "Dickens [0.6]"]
    assert json.loads(table.column("provenance")[0].as_py())["s_k"] == pytest.approx(pairs[0].provenance["s_k"])
    ds = datasets.load_from_disk(pipe.store.local_path("datasets/dpo"))
    assert ds.num_rows == 2 and ds[0]["passage_id"] == "p-q1" and ds[1]["s_l"] == 0.5
    assert datasets.load_from_disk(pipe.store.local_path("datasets/sft")).num_rows == len(sft)
    assert pipe.store.read_bytes("scores_hist.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert pipe.store.read_json("datasets_summary.json") == json.loads(json.dumps(summary))


def test_datasets_rerun_is_identical(run_dir: str) -> None:
    pipe = setup_run(run_dir)
    run_stages(pipe, "scores", "datasets")
    first = {f: pipe.store.read_bytes(f) for f in ("dpo_pairs.jsonl", "sft.jsonl", "dpo_pairs.parquet")}
    run_stages(pipe, "datasets")
    assert {f: pipe.store.read_bytes(f) for f in first} == first


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"knowledge_filter": False}, [("q1", "Rome [0.9]"), ("q3", "In 1889 [0.4]"), ("q4", "Dickens [0.6]")]),
        ({"consistency_filter": False}, [("q1", "Rome [0.9]"), ("q2", "Sydney [0.9]"), ("q4", "Dickens [0.6]")]),
        ({"truncated_samples": "keep"},
         [("q1", "Berlin is the capital. It has [0.95]"), ("q4", "Dickens [0.6]"), ("q8", "Mars and [0.9]")]),
        ({"truncated_samples": "trim"}, [("q1", "Berlin is the capital."), ("q4", "Dickens [0.6]")]),
        ({"tau_k": 0.85}, []),
        ({"drop_truncated_reference": False, "tau_k": 0.0},
         [("q1", "Rome [0.9]"), ("q3", "In 1889 [0.4]"), ("q4", "Dickens [0.6]"), ("q5", "y [0.9]")]),
    ],
)
def test_datasets_options(run_dir: str, options: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    import datasets

    pipe = setup_run(run_dir, datasets=options)
    _, summary = run_stages(pipe, "scores", "datasets")
    pairs = pipe.store.read_records("dpo_pairs.jsonl", PreferencePair)
    assert [(p.question_id, p.rejected) for p in pairs] == expected
    assert summary["dpo_pairs"] == len(expected)
    if not expected:  # nothing kept: empty but readable files, counts in the summary
        assert pipe.store.read_text("dpo_pairs.jsonl") == ""
        assert datasets.load_from_disk(pipe.store.local_path("datasets/dpo")).num_rows == 0
        assert summary["removed"]["knowledge"] == 3


def test_datasets_max_questions_samples_a_seeded_subset(run_dir: str) -> None:
    unfiltered = {"consistency_filter": False, "knowledge_filter": False, "pair_mode": "multiple"}
    pipe = setup_run(run_dir, datasets=unfiltered)
    _, full = run_stages(pipe, "scores", "datasets")
    every = pipe.store.read_records("dpo_pairs.jsonl", PreferencePair)
    ids = sorted({p.question_id for p in every})
    assert len(ids) >= 3
    picked = []
    for _ in range(2):  # the same seed picks the same questions
        pipe = setup_run(run_dir, datasets={**unfiltered, "max_questions": 2})
        (summary,) = run_stages(pipe, "datasets")
        pairs = pipe.store.read_records("dpo_pairs.jsonl", PreferencePair)
        picked.append(sorted({p.question_id for p in pairs}))
        # every pair of a picked question is kept (pair_mode multiple), none of the others
        assert pairs == [p for p in every if p.question_id in picked[-1]]
        assert summary["removed"]["sampled_out"] == len(ids) - 2
    assert picked[0] == picked[1] and len(picked[0]) == 2
    pipe = setup_run(run_dir, datasets={**unfiltered, "max_questions": 99})
    (summary,) = run_stages(pipe, "datasets")
    assert summary["dpo_pairs"] == full["dpo_pairs"] and "sampled_out" not in summary["removed"]
    with pytest.raises(ConfigError, match="datasets.max_questions"):
        setup_run(run_dir, datasets={"max_questions": 0}).stage("datasets").validate()


def test_datasets_multiple_pairs(run_dir: str) -> None:
    pipe = setup_run(run_dir, datasets={"pair_mode": "multiple", "max_pairs_per_question": 4})
    run_stages(pipe, "scores", "datasets")
    pairs = pipe.store.read_records("dpo_pairs.jsonl", PreferencePair)
    # q1: chosen y*, "Paris [0.1]", "Paris! [0.2]"; rejected (> 0.5, complete): Rome 0.9, Lyon 0.6
    assert [(p.question_id, p.chosen, p.rejected) for p in pairs] == [
        ("q1", "Paris is the capital.", "Rome [0.9]"),
        ("q1", "Paris [0.1]", "Lyon [0.6]"),
        ("q4", "Jane Austen.", "Dickens [0.6]"),
    ]
    assert pairs[1].provenance["chosen_source"] == "with_passage[0]"
    assert len({p.id for p in pairs}) == 3


def test_datasets_no_passage_variant(run_dir: str) -> None:
    bad = setup_run(run_dir, datasets={"variant": "no_passage"})
    with pytest.raises(ConfigError, match="consistency_filter: false"):
        bad.stage("datasets").validate()
    pipe = setup_run(run_dir, datasets={"variant": "no_passage", "consistency_filter": False})
    run_stages(pipe, "scores")
    with pytest.raises(ConfigError, match="scores.no_passage: true"):
        pipe.stage("datasets").run()
    pipe = setup_run(run_dir, scores={"no_passage": True},
                     datasets={"variant": "no_passage", "consistency_filter": False})
    _, summary = run_stages(pipe, "scores", "datasets")
    pairs = {p.question_id: p for p in pipe.store.read_records("dpo_pairs.jsonl", PreferencePair)}
    # q1 Y_r (complete only): Lyon mutual (0.9+0.95)/2, Rome (0.6+0.95)/2 -> chosen Rome, rejected Lyon
    assert (pairs["q1"].chosen, pairs["q1"].rejected) == ("Rome [0.9]", "Lyon [0.6]")
    assert pairs["q1"].provenance["variant"] == "no_passage"
    assert summary["sft"]["rc_questions"] == 0  # the no-passage variant has no RC rows


class SelfLabelBackend:
    """A raw-text backend: per question, a scripted reply for each sampling attempt."""

    capabilities = BackendCapabilities(chat=True, raw=True, seed=True)

    def __init__(self) -> None:
        self.calls = 0

    def identity(self) -> dict[str, Any]:
        return {"backend": "scripted"}

    def generate(self, prompts: Sequence[Any], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        assert params.temperature == 0.3 and params.repetition_penalty == 1.1 and "###" in params.stop
        out = []
        for p in prompts:
            self.calls += 1
            q = p.rsplit("### Instruction: ", 1)[1].split("\n", 1)[0]
            script = {
                "Question q1?": ["Fine answer about q1.\n\n### Instruction: more"],
                "Question q2?": ["Red apples. Red apples.", "A good answer. It is complete."],
            }.get(q, ["", "", "", "", ""])
            text = script[min(sample_offset, len(script) - 1)]
            out.append([Completion(text=text, completion_tokens=len(text.split()))] * n)
        return out

    def close(self) -> None:
        pass


def test_self_labelled_rows(run_dir: str) -> None:
    backend = SelfLabelBackend()
    opts = {"sft_rc_fraction": 0.0, "self_label": "on", "self_label_retries": 3}
    pipe = setup_run(run_dir, backend=backend, datasets=opts)
    _, summary = run_stages(pipe, "scores", "datasets")
    rows = {r.question_id: r for r in pipe.store.read_records("sft.jsonl", SFTExample)}
    assert rows["q1"].completion == "Fine answer about q1." and rows["q1"].origin == "self"
    assert rows["q2"].completion == "A good answer. It is complete."  # 2nd attempt
    assert rows["q1"].prompt == "Question q1?"  # no passage
    assert set(rows) == {"q1", "q2"}
    sft = summary["sft"]
    assert sft["self_label_rows"] == 2 and sft["self_label_failed"] == 5
    assert sft["self_label_rejections"] == {"repetition": 1, "empty": 15}
    # a re-run answers from the generation cache: no backend call
    calls = backend.calls
    again = Pipeline(run_dir=run_dir, load_entry_points=False, scorer=TableScorer(), backend=backend, datasets=opts)
    run_stages(again, "datasets")
    assert backend.calls == calls
    assert pipe.store.read_records("sft.jsonl", SFTExample) == list(rows.values())


def test_scores_with_tiny_nli_rerun_is_free(run_dir: str, nli2_model: str) -> None:
    scorer = {"use": "selfcheck-nli", "options": {"model": nli2_model, "device": "cpu"}}
    pipe = setup_run(run_dir, scorer=scorer)
    (first,) = run_stages(pipe, "scores")
    assert first["engine_computed"] > 0 and first["scorer"]["scorer"] == "selfcheck-nli"
    before = pipe.store.read_bytes("scores.jsonl")
    pipe.close()
    again = Pipeline(run_dir=run_dir, load_entry_points=False, scorer=scorer)
    (second,) = run_stages(again, "scores")
    assert second["engine_computed"] == 0
    assert again.store.read_bytes("scores.jsonl") == before
    again.close()


class LetterBackend(SelfLabelBackend):
    """Answers every reflection prompt with "A"."""

    def generate(self, prompts: Sequence[Any], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        self.calls += len(prompts)
        return [[Completion(text="A")] * n for _ in prompts]


@pytest.mark.parametrize("name", ["bsdetector", "semantic-entropy", "selfcheck-embedding"])
def test_model_scorers_through_the_pipeline(
    run_dir: str, name: str, nli2_model: str, nli3_model: str, tiny_encoder: str
) -> None:
    """Each built-in scorer, built from its config by the pipeline (factory, context, caches)."""
    model = {"bsdetector": nli2_model, "semantic-entropy": nli3_model, "selfcheck-embedding": tiny_encoder}[name]
    backend = LetterBackend()
    scorer = {"use": name, "options": {"model": model, "device": "cpu"}}
    if name == "semantic-entropy":  # the table's answers carry no log-probabilities
        scorer["options"]["use_logprobs"] = False
    pipe = setup_run(run_dir, scorer=scorer, backend=backend)
    (summary,) = run_stages(pipe, "scores")
    recs = {r.question_id: r for r in pipe.store.read_records("scores.jsonl", Scores)}
    assert summary["scorer"]["scorer"] == name
    for r in recs.values():
        assert r.s_k is not None and 0.0 <= r.s_k <= 1.0
        assert len(r.knowledge_samples) == len(TABLE[r.question_id][2])
    assert (backend.calls > 0) == (name == "bsdetector")  # only bsdetector asks the model
    pipe.close()


class LikelihoodScorer(TableScorer):
    """A scorer that declares it needs per-token log-probabilities."""

    needs_logprobs = True


def test_a_scorer_needing_logprobs_gets_none_is_an_error(run_dir: str) -> None:
    from selflearn.builtin.scorers.semantic_entropy import Options as SEOptions
    from selflearn.builtin.scorers.semantic_entropy import SemanticEntropy

    pipe = setup_run(run_dir, scorer=LikelihoodScorer())
    gens = pipe.store.read_records("generations.jsonl", Generations)
    backend = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    for g in gens:
        g.provenance.update(backend=backend, params={"without_passage": {"logprobs": True}})
    pipe.store.write_records("generations.jsonl", gens)
    with pytest.raises(StageError, match=r"needs per-token log-probabilities") as err:
        run_stages(pipe, "scores")
    assert "http://127.0.0.1:9/v1" in str(err.value) and "ignored the request" in str(err.value)
    assert not pipe.store.exists("scores.jsonl")
    pipe.close()
    # with log-probabilities on every sample the same scorer runs
    for g in gens:
        for c in (*g.with_passage, *g.without_passage):
            object.__setattr__(c, "logprobs", [-0.5])
    pipe = setup_run(run_dir, scorer=LikelihoodScorer())
    pipe.store.write_records("generations.jsonl", gens)
    (summary,) = run_stages(pipe, "scores")
    assert summary["questions"] == len(gens)
    pipe.close()
    assert SemanticEntropy(SEOptions(), None).needs_logprobs  # type: ignore[arg-type]
    assert not SemanticEntropy(SEOptions(use_logprobs=False), None).needs_logprobs  # type: ignore[arg-type]
