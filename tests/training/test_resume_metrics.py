"""Training metrics after a resume: a run stopped after a checkpoint and resumed records the
loss and token counts of the WHOLE training in its metrics and log history (what train.json is
built from), its lineage file and its model card, equal to an uninterrupted run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from selflearn.builtin.trainers import sft
from selflearn.builtin.trainers.lineage import LINEAGE_FILE
from selflearn.core.protocols import TrainRequest

from .conftest import sft_options, sft_rows

#: metrics that measure the machine or the process, not the training
OWN = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "resumed_from",
       "best_checkpoint")


def _train(tiny_llama: str, out: Path) -> Any:
    # logging every 5 steps does not line up with the checkpoints every 2 steps
    options = sft_options(max_steps=6, save_steps=2, logging_steps=5, save_total_limit=5,
                          keep_checkpoints=True)
    return sft.SFTTrainer(options).train(TrainRequest(rows=sft_rows(12), model=tiny_llama,
                                                      output_dir=str(out)))


def _stable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in OWN}


def _history(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_stable(e) for e in entries]


def test_resumed_training_records_the_whole_trainings_metrics(tiny_llama: str, tmp_path: Path) -> None:
    whole = _train(tiny_llama, tmp_path / "whole")
    # a run stopped right after its first checkpoint: its folder holds only checkpoint-2
    stopped = tmp_path / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    for name in ("checkpoint-2", "selflearn-fingerprint.json"):
        src = tmp_path / "whole" / "checkpoints" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, stopped / "checkpoints" / name)
    resumed = _train(tiny_llama, stopped)
    assert resumed.metrics["resumed_from"] == "checkpoint-2"

    assert _stable(resumed.metrics) == _stable(whole.metrics)
    assert _history(resumed.log_history) == _history(whole.log_history)
    steps = [e["step"] for e in whole.log_history if "loss" in e]
    assert steps == [1, 2, 4, 5, 6]  # first step, each checkpoint, the logging step, the end
    losses = {e["step"]: e["loss"] for e in whole.log_history if "loss" in e}
    spans = {1: 1, 2: 1, 4: 2, 5: 1, 6: 1}
    assert whole.metrics["train_loss"] == sum(losses[s] * spans[s] for s in spans) / 6
    tokens = [e["num_tokens"] for e in resumed.log_history if "num_tokens" in e]
    assert tokens == sorted(tokens) and resumed.metrics["num_tokens"] == tokens[-1] > 0

    for name in ("whole", "stopped"):
        lineage = json.loads((tmp_path / name / LINEAGE_FILE).read_text())
        assert _stable(lineage["metrics"]) == _stable(whole.metrics)
        card = (tmp_path / name / "README.md").read_text()
        assert f"| train_loss | {whole.metrics['train_loss']} |" in card
        assert f"| num_tokens | {whole.metrics['num_tokens']} |" in card
