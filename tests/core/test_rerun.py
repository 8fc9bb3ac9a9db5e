"""Changed inputs are noticed (issue 23): a ``files`` corpus edited, extended or touched between
two runs re-runs exactly the stages that depend on it, ``rerun=`` / ``--rerun`` forces a stage and
its dependents, and the per-call cache still saves every unchanged model call."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from selflearn import Document, Pipeline
from selflearn.builtin.backends.echo import EchoBackend, Options
from selflearn.cli import main

DATA_STAGES = ["documents", "passages", "questions", "generations", "scores", "datasets"]


class CountingEcho(EchoBackend):
    """The echo backend, counting the completions it is asked for (shared across runs)."""

    def __init__(self, counter: list[int]) -> None:
        super().__init__(Options())
        self.counter = counter

    def generate(self, prompts, params, *, n=1, sample_offset=0):  # type: ignore[no-untyped-def]
        self.counter[0] += len(prompts) * n
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)


def _text(topic: str, year: int) -> str:
    return f"# {topic}\n\n{topic} was founded in {year} by Ada Lovelace. It lies near Lake Geneva.\n"


def _corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    for i, topic in enumerate(["Alpha", "Beta", "Gamma"]):
        (root / f"{topic.lower()}.md").write_text(_text(topic, 1900 + i))
    return root


def _pipeline(run_dir: Path, corpus: Path, counter: list[int]) -> Pipeline:
    return Pipeline(
        run_dir=str(run_dir),
        source={"use": "files", "options": {"url": str(corpus)}},
        chunker={"use": "sentences", "options": {"max_tokens": 64}},
        question_generator="template",
        backend=CountingEcho(counter),
        scorer="lexical",
        generations={"k": 2},
        datasets={"self_label": "off"},
    )


def _run(run_dir: Path, corpus: Path, **kwargs: Any) -> tuple[dict[str, str], int, dict[str, Any]]:
    counter = [0]
    outcomes = _pipeline(run_dir, corpus, counter).run(until="datasets", **kwargs)
    return {o.name: o.status for o in outcomes}, counter[0], {o.name: o.summary for o in outcomes}


def _ran(statuses: dict[str, str]) -> list[str]:
    return [name for name, status in statuses.items() if status == "ran"]


def test_edited_added_and_touched_files(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    run_dir = tmp_path / "run"
    statuses, calls, summaries = _run(run_dir, corpus)
    assert _ran(statuses) == DATA_STAGES
    first_calls = calls
    per_question = 1 + 2 + 2  # y*, K=2 with the passage, K=2 without
    assert first_calls == summaries["generations"]["questions"] * per_question > 0

    statuses, calls, _ = _run(run_dir, corpus)
    assert _ran(statuses) == [] and calls == 0

    # a touched file (new modification time, same bytes) is not a change
    stat = os.stat(corpus / "beta.md")
    os.utime(corpus / "beta.md", (stat.st_atime + 100, stat.st_mtime + 100))
    statuses, calls, _ = _run(run_dir, corpus)
    assert _ran(statuses) == [] and calls == 0

    # an edited file re-runs every stage that depends on the documents; only its questions
    # reach the backend, the others are answered by the per-call cache
    (corpus / "beta.md").write_text(_text("Beta", 1777))
    statuses, calls, summaries = _run(run_dir, corpus)
    assert _ran(statuses) == DATA_STAGES
    edited = [q for q in _rows(run_dir / "questions.jsonl") if q["document_id"] == "beta.md"]
    assert edited and calls == len(edited) * per_question
    assert summaries["generations"]["backend_generations"] == calls
    assert summaries["generations"]["cached_generations"] == first_calls - calls

    # an added file: the same, and documents.jsonl now holds it
    (corpus / "delta.md").write_text(_text("Delta", 1950))
    statuses, calls, _ = _run(run_dir, corpus)
    assert _ran(statuses) == DATA_STAGES
    assert "delta.md" in {d["id"] for d in _rows(run_dir / "documents.jsonl")}
    added = [q for q in _rows(run_dir / "questions.jsonl") if q["document_id"] == "delta.md"]
    assert added and calls == len(added) * per_question


def test_rerun_forces_a_stage_and_its_dependents(tmp_path):
    corpus = _corpus(tmp_path / "corpus")
    run_dir = tmp_path / "run"
    _run(run_dir, corpus)
    counter = [0]
    plan = _pipeline(run_dir, corpus, counter).plan(until="datasets", rerun="generations")
    assert [r["status"] for r in plan] == ["done"] * 3 + ["pending"] * 3
    statuses, calls, _ = _run(run_dir, corpus, rerun="generations")
    assert _ran(statuses) == ["generations", "scores", "datasets"]
    assert calls == 0  # everything was in the per-call cache
    statuses, _, _ = _run(run_dir, corpus, rerun=["scores"])
    assert _ran(statuses) == ["scores", "datasets"]


def test_cli_rerun(tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus")
    run_dir = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "source": {"use": "files", "options": {"url": str(corpus)}},
        "chunker": {"use": "sentences", "options": {"max_tokens": 64}},
        "question_generator": "template",
    }))
    args = ["run", str(config), "--run-dir", str(run_dir), "--until", "questions"]
    assert main(args) == 0
    assert main([*args, "--rerun", "passages"]) == 0
    out = capsys.readouterr().out
    last = out[out.rindex("run directory"):]
    assert "documents    skipped" in last and "passages     ran" in last and "questions    ran" in last
    assert main([*args, "--rerun", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "--rerun" in err and "unknown stage 'nonsense'" in err and "Traceback" not in err


def test_source_without_fingerprint_is_named_in_a_warning(tmp_path, caplog):
    class PlainSource:
        def documents(self):
            yield Document(id="d1", title="T", text="Topic one was founded in 1900 by Ada.")

    with caplog.at_level(logging.WARNING, logger="selflearn"):
        Pipeline(run_dir=str(tmp_path / "r"), source=PlainSource()).run(until="documents")
    warnings = [r.getMessage() for r in caplog.records if "fingerprint" in r.getMessage()]
    assert len(warnings) == 1
    assert "PlainSource" in warnings[0] and "--rerun documents" in warnings[0]


def test_source_fingerprint_enters_the_documents_stage(tmp_path):
    class Versioned:
        def __init__(self, version: str) -> None:
            self.version = version

        def documents(self):
            yield Document(id="d1", title="T", text="Topic one was founded in 1900 by Ada.")

        def fingerprint(self) -> str:
            return self.version

    run_dir = str(tmp_path / "r")
    Pipeline(run_dir=run_dir, source=Versioned("1")).run(until="documents")
    assert Pipeline(run_dir=run_dir, source=Versioned("1")).plan(until="documents")[0]["status"] == "done"
    assert Pipeline(run_dir=run_dir, source=Versioned("2")).plan(until="documents")[0]["status"] == "pending"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
