"""The ``ray`` engine against the ``local`` one on a local 2-CPU Ray cluster with tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.config import merge

from .helpers import history_run

STAGE_FILES = ("questions.jsonl", "test_questions.jsonl", "generations.jsonl", "scores.jsonl")


def config(run_dir: Path, model: str, encoder: str, engine: str, **execution: Any) -> dict[str, Any]:
    """A reduced offline run: real Wikipedia leads, template questions, the tiny Llama sampling."""
    short = {"max_new_tokens": 8}
    return merge(history_run(run_dir, engine, **execution), {
        "model": model,
        "question_generator": "template",
        "backend": {"use": "hf", "options": {"batch_size": 4}},
        "generations": {"reference": short, "with_passage": short, "without_passage": short},
        "scorer": {"use": "selfcheck-embedding", "options": {"model": encoder}},
    })


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.mark.slow
def test_ray_run_equals_the_local_run_byte_for_byte(ray_session, tiny_llama, tiny_encoder, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    Pipeline(config(local, tiny_llama, tiny_encoder, "local")).run(until="scores")
    outcomes = Pipeline(config(remote, tiny_llama, tiny_encoder, "ray", workers=2)).run(until="scores")
    for name in STAGE_FILES:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    assert len((remote / "generations.jsonl").read_text().splitlines()) == 4
    # the engine is recorded, and never enters a stage's fingerprint
    m_local, m_ray = manifest(local), manifest(remote)
    assert m_ray["execution"] == {"engine": "ray", "workers": 2}
    assert m_local["execution"] == {"engine": "local", "workers": 1}
    for stage in ("questions", "generations", "scores"):
        assert m_local["stages"][stage]["fingerprint"] == m_ray["stages"][stage]["fingerprint"]
    # per-worker throughput: both workers took shards of the 4 questions
    by_stage = {o.name: o.summary for o in outcomes}
    per_worker = by_stage["generations"]["execution"]["per_worker"]
    assert len(per_worker) == 2
    assert sum(w["items"] for w in per_worker.values()) == 4
    assert all(w["items_per_second"] > 0 for w in per_worker.values())
    assert by_stage["generations"]["backend_generations"] == 4 * 5


def served(run_dir: Path, url: str, encoder: str, engine: str, **execution: Any) -> dict[str, Any]:
    """A run whose every model-calling stage keeps usage counters: the local question generator
    and the generations on an OpenAI-protocol server (requests, tokens), the encoder's passes."""
    return merge(history_run(run_dir, engine, **execution), {
        "question_generator": {"use": "local", "options": {"shots": 1, "max_new_tokens": 24}},
        "backend": {"use": "openai", "options": {"base_url": url + "/v1", "model": "test-model",
                                                 "seeded_samples": True, "backoff": 0.01}},
        "scorer": {"use": "selfcheck-embedding", "options": {"model": encoder}},
    })


def usage_fields(outcomes: list[Any]) -> dict[str, Any]:
    """Every stage summary's usage field (what the local engine always reported)."""
    by_stage = {o.name: o.summary for o in outcomes}
    return {
        "generator": by_stage["questions"]["generator"],
        "test_generator": by_stage["questions"]["test_generator"],
        "backend_usage": by_stage["generations"]["backend_usage"],
        "encoder_computed": by_stage["scores"]["encoder_computed"],
    }


@pytest.mark.slow
def test_ray_reports_the_same_usage_totals_as_local(ray_session, tiny_encoder, tmp_path):
    from tests.backends.helpers import fake_text
    from tests.servers import FakeServer, openai_handler

    def respond(body: dict[str, Any], i: int) -> str:  # a question-like text per (prompt, seed, i)
        return f"What is {fake_text(body['messages'][-1]['content'], (body.get('seed'), i), 5)}?"

    local, remote = tmp_path / "local", tmp_path / "ray"
    with FakeServer(openai_handler(respond)) as server:
        expected = usage_fields(Pipeline(served(local, server.url, tiny_encoder, "local")).run(until="scores"))
        local_requests = len(server.requests)
        server.requests.clear()
        got = usage_fields(Pipeline(served(remote, server.url, tiny_encoder, "ray", workers=2)).run(until="scores"))
    assert got == expected
    for name in STAGE_FILES:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    # the totals are real: they count the server's requests, under either engine
    counted = expected["generator"]["usage"]["requests"] + expected["test_generator"]["usage"]["requests"]
    assert counted + expected["backend_usage"]["requests"] == local_requests == len(server.requests)
    assert expected["backend_usage"]["completion_tokens"] > 0 and expected["encoder_computed"] > 0
    assert sum(expected["generator"]["stats"].values()) > 0


@pytest.mark.slow
def test_two_rounds_with_carried_questions_under_ray_equal_local(ray_session, tiny_llama, tmp_path):
    """rounds.passages fresh+unknown under engine ray: round 2's question generator (the
    previous round's unknown questions plus the configured generator for fresh passages) is
    unpickled on each worker and bound to the worker's context there; every round's questions,
    generations and scores equal the local run's (run paths and weight fingerprints aside)."""
    from selflearn.core.records import Question
    from tests.integration.test_rounds import _config, _normalised, _records

    runs = {}
    for engine in ("local", "ray"):
        runs[engine] = tmp_path / engine
        execution = {"engine": "ray", "workers": 2, "shard_size": 2} if engine == "ray" else {"engine": "local"}
        config = _config(runs[engine], tiny_llama, scorer="lexical", execution=execution,
                         rounds={"count": 2, "passages": "fresh+unknown", "heldout_scores": False})
        Pipeline(config).run(until="scores")  # round 1 whole, round 2 up to its scores
    for r in ("round-1", "round-2"):
        for name in ("questions.jsonl", "test_questions.jsonl", "generations.jsonl", "scores.jsonl"):
            local, ray = (_normalised(runs[e] / r / name, runs[e]) for e in ("local", "ray"))
            assert local == ray, (r, name)
    q1 = {q.id for q in _records(runs["ray"] / "round-1" / "questions.jsonl", Question)}
    q2 = {q.id for q in _records(runs["ray"] / "round-2" / "questions.jsonl", Question)}
    assert q1 & q2 and q2 - q1  # round 1's unknown questions carried over, beside fresh ones
    manifest = json.loads((runs["ray"] / "round-2" / "manifest.json").read_text())
    assert manifest["execution"]["engine"] == "ray"
