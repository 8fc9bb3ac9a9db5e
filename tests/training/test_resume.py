"""A trainer killed with SIGKILL after its first checkpoint resumes from it and finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs

from selflearn.builtin.trainers import sft
from selflearn.core.protocols import TrainRequest

from .conftest import sft_options, sft_rows

ROOT = Path(__file__).resolve().parents[2]

# The child trains; after the first checkpoint is complete it says so and hangs, so that the
# parent kills it at a known point (a kill at a random moment would make the test flaky).
CHILD = r"""
import json, os, sys, time
import transformers
spec = json.load(open(sys.argv[1]))
original = transformers.Trainer._save_checkpoint
def save_then_hang(self, model, trial):
    original(self, model, trial)
    print("CHECKPOINT-SAVED", self.state.global_step, flush=True)
    time.sleep(600)
transformers.Trainer._save_checkpoint = save_then_hang
from selflearn.builtin.trainers import sft
from selflearn.core.protocols import TrainRequest
sft.SFTTrainer(sft.Options(**spec["options"])).train(TrainRequest(**spec["request"]))
print("FINISHED", flush=True)
"""


def test_killed_training_resumes_from_its_checkpoint(tiny_llama: str, tmp_path: Path) -> None:
    options = {**attrs.asdict(sft_options()), "max_steps": 6, "save_steps": 2}
    request = {"rows": sft_rows(8), "model": tiny_llama, "output_dir": str(tmp_path / "sft")}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"options": options, "request": request}))
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "SELFLEARN_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    errors = (tmp_path / "child.err").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(spec)],
        stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=str(tmp_path),
    )
    try:
        deadline = time.monotonic() + 120
        assert child.stdout is not None
        line = ""
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line or line.startswith("CHECKPOINT-SAVED"):
                break
        if not line.startswith("CHECKPOINT-SAVED 2"):
            errors.flush()
            tail = (tmp_path / "child.err").read_text()[-3000:]
            raise AssertionError(f"child did not reach its checkpoint: {line!r}\n{tail}")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        errors.close()
    out = tmp_path / "sft"
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    assert not (out / "selflearn-lineage.json").exists()  # not finished

    result = sft.SFTTrainer(sft.Options(**options)).train(TrainRequest(**request))
    assert result.metrics["resumed_from"] == "checkpoint-2"
    assert result.metrics["global_step"] == 6
    steps = [e["step"] for e in result.log_history if "loss" in e]
    # steps 1-2 come from the killed run's saved state, 3-6 were trained after resuming
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (out / "selflearn-lineage.json").exists() and not (out / "checkpoints").exists()


def test_checkpoints_of_other_data_are_not_resumed(tiny_llama: str, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    stale = out / "checkpoints" / "checkpoint-4"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / "selflearn-fingerprint.json").write_text('{"fingerprint": "other"}')
    result = sft.SFTTrainer(sft_options(max_steps=2)).train(
        TrainRequest(rows=sft_rows(4), model=tiny_llama, output_dir=str(out))
    )
    assert result.metrics["resumed_from"] is None and result.metrics["global_step"] == 2
