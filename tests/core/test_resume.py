"""A run killed with SIGKILL in the middle of a stage, started again with the same command,
finishes with exactly the rows of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from selflearn import Document, Pipeline
    from selflearn.builtin.backends.echo import EchoBackend, Options

    class Source:
        def documents(self):
            for i in range(40):
                yield Document(
                    id=f"doc{i}", title=f"Topic {i}",
                    text=f"Topic {i} was founded in {1800 + i} by Ada Lovelace. It lies near "
                         f"Lake Geneva and hosts {i} museums. Its river is called Rhone {i}.",
                    metadata={"split": "test" if i % 5 == 0 else "train", "category": "c"},
                )

    class SlowEcho(EchoBackend):
        def generate(self, prompts, params, *, n=1, sample_offset=0):
            time.sleep(0.05 * len(prompts))
            return super().generate(prompts, params, n=n, sample_offset=sample_offset)

    pipeline = Pipeline(
        run_dir=sys.argv[1], source=Source(), chunker={"use": "sentences", "options": {"max_tokens": 64}},
        question_generator="template", backend=SlowEcho(Options()), scorer="lexical",
        generations={"k": 3, "chunk_size": 2},
    )
    pipeline.run(until="datasets")
    """
)

OUTPUTS = [
    "documents.jsonl",
    "passages.jsonl",
    "questions.jsonl",
    "test_questions.jsonl",
    "generations.jsonl",
    "scores.jsonl",
    "dpo_pairs.jsonl",
    "sft.jsonl",
]


def _run(script: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SELFLEARN_NO_PROGRESS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_stage_then_resume_gives_identical_rows(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    proc = _run(script, clean)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode() if proc.stderr else ""

    proc = _run(script, killed)
    cache = killed / "cache" / "generations.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once the generations stage is well under way
        if cache.exists() and sum(1 for _ in cache.open()) >= 40:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "generations.jsonl").exists()
    done_before = sum(1 for _ in cache.open())

    proc = _run(script, killed)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode() if proc.stderr else ""
    for name in OUTPUTS:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
    # the resumed run did not redo what the killed run had finished
    import json

    manifest = json.loads((killed / "manifest.json").read_text())
    summary = manifest["stages"]["generations"]["summary"]
    assert summary["cached_generations"] >= done_before > 0, summary
    assert summary["backend_generations"] == summary["generations"] - summary["cached_generations"]


def test_dry_run_marks_stages_downstream_of_a_changed_one_pending(tmp_path):
    from selflearn import Document, Pipeline

    class Source:
        def documents(self):
            for i in range(4):
                yield Document(id=f"d{i}", title=f"T{i}", text=f"Topic {i} was founded in {1900 + i} by Ada.")

    def make(limit):
        return Pipeline(run_dir=str(tmp_path / "r"), source=Source(), chunker={"use": "sentences", "options": {"max_tokens": 64}},
                        question_generator="template", documents={"limit": limit})

    make(4).run(until="questions")
    assert [r["status"] for r in make(4).plan(until="questions")] == ["done", "done", "done"]
    assert [r["status"] for r in make(3).plan(until="questions")] == ["pending", "pending", "pending"]
