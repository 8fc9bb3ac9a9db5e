"""Faults under the ray engine: a worker killed mid-stage, and runs interrupted under one
engine and resumed under the other. The echo backend keeps these fast; results must equal an
uninterrupted local run byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import BackendError

from .helpers import FailOnCueBackend, KillOnceBackend, count_lines


def config(run_dir: Path, backend: Any, engine: str) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "seed": 3,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History", "Geography"], "train_per_category": 3, "test_per_category": 1,
            "min_words": 40}},
        "passages": {"max_per_document_train": 1, "max_per_document_test": 1},
        "question_generator": "template",
        "backend": backend,
        "generations": {"k": 3, "chunk_size": 1},
        "execution": {"engine": engine, "workers": 2},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """generations.jsonl of an uninterrupted local run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    Pipeline(config(run_dir, FailOnCueBackend("/nonexistent", "x"), "local")).run(until="generations")
    return (run_dir / "generations.jsonl").read_bytes()


def questions_of(data: bytes) -> list[str]:
    return [json.loads(line)["question_id"] for line in data.decode().splitlines()]


def test_a_worker_killed_mid_stage_loses_nothing(ray_session, reference, tmp_path):
    marker = tmp_path / "killed"
    run_dir = tmp_path / "run"
    outcome = Pipeline(config(run_dir, KillOnceBackend(str(marker)), "ray")).run(until="generations")[-1]
    assert marker.exists()  # a worker was killed mid-shard
    out = (run_dir / "generations.jsonl").read_bytes()
    ids = questions_of(out)
    assert len(ids) == len(set(ids)) == 6  # every question once
    assert out == reference
    execution = outcome.summary["execution"]
    assert execution["lost_workers"] == 1 and execution["reruns"] >= 1
    lines, keys = count_lines(str(run_dir / "cache" / "generations.jsonl"))
    assert lines == keys == 6 * 7  # nothing written twice: y*, 3 Y_c, 3 Y_r per question


def _interrupt_then_resume(tmp_path: Path, first: str, second: str) -> tuple[bytes, dict[str, Any]]:
    """Run ``first`` until a backend failure on one topic, then the same run under ``second``."""
    run_dir, cue = tmp_path / "run", tmp_path / "cue"
    cue.write_text("fail")
    pipe = Pipeline(config(run_dir, FailOnCueBackend(str(cue), "Geography"), first))
    pipe.run(until="questions")
    topic = json.loads((run_dir / "questions.jsonl").read_text().splitlines()[-1])["text"]
    with pytest.raises(BackendError, match="interrupted on cue"):
        Pipeline(config(run_dir, FailOnCueBackend(str(cue), topic), first)).run(until="generations")
    cached = len((run_dir / "cache" / "generations.jsonl").read_text().splitlines())
    assert 0 < cached < 6 * 7  # part of the stage was done and kept
    cue.unlink()
    outcome = Pipeline(config(run_dir, FailOnCueBackend(str(cue), topic), second)).run(until="generations")[-1]
    summary = outcome.summary
    assert summary["backend_generations"] == 6 * 7 - cached  # only what the first run lacked
    lines, keys = count_lines(str(run_dir / "cache" / "generations.jsonl"))
    assert lines == keys == 6 * 7
    return (run_dir / "generations.jsonl").read_bytes(), summary


def test_interrupted_under_ray_resumes_locally(ray_session, reference, tmp_path):
    out, summary = _interrupt_then_resume(tmp_path, "ray", "local")
    assert out == reference and summary["execution"]["engine"] == "local"


def test_interrupted_locally_resumes_under_ray(ray_session, reference, tmp_path):
    out, summary = _interrupt_then_resume(tmp_path, "local", "ray")
    assert out == reference and summary["execution"]["engine"] == "ray"
    assert summary["execution"]["cached_chunks"] >= 1  # finished chunks never left the driver


def test_one_progress_bar_per_stage_over_all_workers(ray_session, tmp_path, monkeypatch):
    from selflearn.core.context import RunContext

    bars: list[str] = []
    original = RunContext.progress

    def recording(self: RunContext, iterable: Any, **kwargs: Any) -> Any:
        bars.append(kwargs.get("desc", ""))
        return original(self, iterable, **kwargs)

    monkeypatch.setattr(RunContext, "progress", recording)
    outcome = Pipeline(config(tmp_path / "run", FailOnCueBackend("/nonexistent", "x"), "ray")).run(
        until="generations")[-1]
    assert bars.count("generations") == 1  # the driver's one bar over both workers' shards
    assert len(outcome.summary["execution"]["per_worker"]) == 2


def test_the_evaluate_stage_answers_on_ray_workers_as_locally(ray_session, tmp_path):
    from tests.evaluation.conftest import write_run

    outputs = {}
    for engine in ("local", "ray"):
        run_dir = tmp_path / engine
        write_run(run_dir)
        cfg = {"run_dir": str(run_dir), "backend": "echo", "scorer": "lexical",
               "evaluate": {"qa": ["trivia:worldcapitals"], "qa_limit": 3, "batch_size": 2},
               "execution": {"engine": engine, "workers": 2}}
        pipe = Pipeline(cfg, load_entry_points=False)
        pipe.stage("evaluate").run()
        pipe.close()
        ev = run_dir / "evaluation"
        outputs[engine] = {f: (ev / f).read_bytes() for f in
                           ("answers_baseline.jsonl", "answers_candidate.jsonl", "references.jsonl")}
    assert outputs["ray"] == outputs["local"]
    assert outputs["ray"]["answers_candidate.jsonl"].count(b"\n") == 4 + 2 + 3  # test, known, QA


def test_self_labelling_runs_on_ray_workers_as_locally(ray_session, tmp_path):
    outputs = {}
    for engine in ("local", "ray"):
        cfg = config(tmp_path / engine, "echo", engine)
        cfg.update(scorer="lexical", datasets={"self_label": "on", "sft_rc_fraction": 0.0,
                                               "consistency_filter": False, "knowledge_filter": False})
        cfg["execution"]["shard_size"] = 2
        outcome = Pipeline(cfg).run(until="datasets")[-1]
        outputs[engine] = (tmp_path / engine / "sft.jsonl").read_bytes()
    rows = [json.loads(line) for line in outputs["ray"].decode().splitlines()]
    assert rows and {r["origin"] for r in rows} == {"self"}
    assert outputs["ray"] == outputs["local"]
    assert outcome.summary["sft"]["self_label_execution"]["shards"] == 3  # 6 questions, 2 a shard
