"""The ``ray`` engine against the ``local`` one on a local 2-CPU Ray cluster with tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selflearn import Pipeline

STAGE_FILES = ("questions.jsonl", "test_questions.jsonl", "generations.jsonl", "scores.jsonl")


def config(run_dir: Path, model: str, encoder: str, engine: str, **execution: Any) -> dict[str, Any]:
    """A reduced offline run: real Wikipedia leads, template questions, the tiny Llama sampling."""
    short = {"max_new_tokens": 8}
    return {
        "run_dir": str(run_dir),
        "model": model,
        "seed": 7,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History"], "train_per_category": 4, "test_per_category": 1, "min_words": 40}},
        "passages": {"max_per_document_train": 1, "max_per_document_test": 1},
        "question_generator": "template",
        "questions": {"batch_size": 2},
        "backend": {"use": "hf", "options": {"batch_size": 4}},
        "generations": {"k": 2, "chunk_size": 1, "reference": short, "with_passage": short,
                        "without_passage": short},
        "scorer": {"use": "selfcheck-embedding", "options": {"model": encoder}},
        "execution": {"engine": engine, "shard_size": 1, **execution},
    }


def manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


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
