"""Training across processes: ``torchrun`` starts 2 CPU processes (DDP over gloo) that run
the whole pipeline up to ``train``: rank 0 runs the data stages while rank 1 waits, both train
SFT then DPO, and only rank 0 writes the model folders, lineage, cards and run files; rounds
the same way, each round's training on both processes; ``flow: paper`` with G_SFT (its
``sft_model`` stage) trained on both processes from the rows rank 0 labelled alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import selflearn
from tests.training.conftest import FAST, generate

ROOT = Path(selflearn.__file__).resolve().parents[1]
SOURCE = {"use": "wikipedia-offline", "options": {
    "categories": ["History"], "train_per_category": 4, "test_per_category": 1, "min_words": 40}}


def _launch_config(run_dir: Path, model: str, encoder: str, **extra: Any) -> dict[str, Any]:
    """A run small enough for 2 CPU processes: echo answers, template questions, no filters."""
    return {
        "run_dir": str(run_dir),
        "model": model,
        "source": SOURCE,
        "chunker": {"use": "sentences", "options": {"max_tokens": 96}},  # short RC prompts
        "passages": {"max_per_document_train": 1, "max_per_document_test": 1},
        "question_generator": "template",
        "backend": "echo",
        "generations": {"k": 2},
        "scorer": {"use": "selfcheck-embedding", "options": {"model": encoder}},
        "datasets": {"consistency_filter": False, "knowledge_filter": False, "truncated_samples": "keep",
                     "drop_truncated_reference": False},
        **extra,
    }


@pytest.mark.slow
def test_sft_then_dpo_on_two_cpu_processes(tiny_llama, tiny_encoder, tmp_path):
    run_dir, trace = tmp_path / "run", tmp_path / "writes.log"
    config = _launch_config(run_dir, tiny_llama, tiny_encoder, **_sft_dpo())
    config["datasets"]["sft_rc_fraction"] = 1.0
    writes = _launch(tmp_path, config, trace, "--until", "train")
    lineage = Counter(path for _, kind, path in writes if kind == "lineage")
    assert set(lineage.values()) == {1} and len(lineage) == 2  # sft and dpo, once each
    models = Counter(path for _, kind, path in writes if kind == "model")
    assert set(models.values()) == {1}
    for name in ("sft", "dpo"):
        folder = run_dir / "models" / name
        record = json.loads((folder / "selflearn-lineage.json").read_text())
        assert record["training"]["world_size"] == 2  # DDP over both processes
        assert (folder / "README.md").exists()
        generate(folder)  # the model folder loads and generates
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "train" in manifest["stages"]
    assert json.loads((run_dir / "train.json").read_text())["models"]["dpo"] == str(run_dir / "models" / "dpo")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.conftest import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-dist")))


def _sft_dpo() -> dict[str, Any]:
    """SFT then DPO, two steps each, small enough for 2 CPU processes."""
    return {
        "sft_trainer": {"use": "trl-sft", "options": {**FAST, "max_steps": 2, "max_length": 1024}},
        "trainer": {"use": "trl-dpo", "options": {**FAST, "max_steps": 2, "max_prompt_length": 384,
                                                  "max_length": 1024}},
    }


@pytest.mark.slow
def test_paper_flow_on_two_cpu_processes(tiny_llama, tiny_encoder, tmp_path):
    """Rank 0 labels the SFT rows alone (the sft stage), both processes train G_SFT (the
    sft_model stage) and then DPO from it; rank 0 generates with G_SFT in between."""
    run_dir, trace = tmp_path / "run", tmp_path / "writes.log"
    config = _launch_config(run_dir, tiny_llama, tiny_encoder, flow="paper", **_sft_dpo())
    config["datasets"].update(sft_rc_fraction=1.0, self_label="off")
    writes = _launch(tmp_path, config, trace, "--until", "train")
    sft_dir, dpo_dir = run_dir / "models" / "sft", run_dir / "models" / "dpo"
    assert Counter(path for _, kind, path in writes if kind == "lineage") == {str(sft_dir): 1, str(dpo_dir): 1}
    for folder in (sft_dir, dpo_dir):
        assert json.loads((folder / "selflearn-lineage.json").read_text())["training"]["world_size"] == 2
    assert json.loads((run_dir / "sft_model.json").read_text())["model"] == str(sft_dir)
    gens = [json.loads(x) for x in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert gens and {g["provenance"]["backend"]["model"] for g in gens} == {str(sft_dir)}  # G_SFT answered
    dpo = json.loads((dpo_dir / "selflearn-lineage.json").read_text())
    assert dpo["lineage"]["start_model"] == str(sft_dir)
    assert {"sft", "sft_model", "train"} <= set(json.loads((run_dir / "manifest.json").read_text())["stages"])


@pytest.mark.slow
def test_two_rounds_on_two_cpu_processes(tiny_llama, tiny_encoder, tmp_path):
    """Rank 1 follows each round's pipeline (waiting for rank 0's data stages, whichever
    sub-directory they are in), trains every round with rank 0, and writes nothing; rank 0
    alone evaluates and reports. Round 2 trains round 1's model, both with DDP over 2 processes."""
    run_dir, trace = tmp_path / "run", tmp_path / "writes.log"
    config = _launch_config(
        run_dir, tiny_llama, tiny_encoder,
        trainer={"use": "trl-dpo", "options": {**FAST, "max_steps": 1, "max_prompt_length": 384,
                                               "max_length": 512}},
        evaluate={"max_new_tokens": 8, "known_items": 1, "qa": [], "bootstrap_resamples": 20},
        rounds={"count": 2, "min_pairs": 1},
    )
    writes = _launch(tmp_path, config, trace, timeout=900)
    summary = json.loads((run_dir / "rounds.json").read_text())
    assert summary["completed"] == 2 and summary["stopped"] is None
    model1, model2 = (info["model"] for info in summary["per_round"])
    assert json.loads((run_dir / "round-2" / "train.json").read_text())["base_model"] == model1
    for model in (model1, model2):
        record = json.loads((Path(model) / "selflearn-lineage.json").read_text())
        assert record["training"]["world_size"] == 2  # both rounds trained on both processes
    assert Counter(path for _, kind, path in writes if kind == "lineage") == {model1: 1, model2: 1}
    assert (run_dir / "report.md").exists() and "evaluate" in json.loads(
        (run_dir / "round-2" / "manifest.json").read_text())["stages"]

    # the same launch again resumes to a finished run: no model written again, nothing by rank 1
    trace.unlink()
    again = subprocess.run(_torchrun(tmp_path / "run.yaml"), env=_env(trace), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rewrites = [line.split(" ", 2) for line in trace.read_text().splitlines()] if trace.exists() else []
    assert not [w for w in rewrites if w[0] != "0" or w[1] in ("model", "lineage")]


def _launch(tmp_path: Path, config: dict[str, Any], trace: Path, *args: str, timeout: int = 600) -> list[list[str]]:
    """``selflearn run`` of ``config`` under torchrun on 2 processes, which must succeed with
    every file written by rank 0 alone: the write trace's (rank, kind, path) rows."""
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    done = subprocess.run(_torchrun(tmp_path / "run.yaml", *args), env=_env(trace), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    writes = [line.split(" ", 2) for line in trace.read_text().splitlines()]
    assert writes and {rank for rank, _, _ in writes} == {"0"}  # rank 1 wrote nothing
    return writes


def _env(trace: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SELFLEARN_WRITE_TRACE": str(trace),
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "write_trace"), str(ROOT)])}


def _torchrun(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "selflearn.cli", "run", str(config), *args]
