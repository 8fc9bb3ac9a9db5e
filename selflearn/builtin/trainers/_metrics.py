"""Metrics of the WHOLE training, also after a resume from a checkpoint.

transformers restores the checkpoint's ``log_history`` on resume, but the numbers it returns at
the end (``train_loss``) and TRL's running token count (``num_tokens`` in each log entry) only
cover the steps trained by the resuming process: a run killed after its checkpoint at step 2 of
6 reported the loss of steps 3-6 divided by 6 and the tokens of steps 3-6 only. Here both are
rebuilt from the full log history, the same way for a resumed and an uninterrupted run:

* the trainer logs at every checkpoint and at the last step (:func:`log_boundaries`), so the
  logged intervals tile the whole training identically whether or not it was interrupted;
* ``train_loss`` is the mean of the logged interval losses weighted by their steps (what
  transformers computes for an uninterrupted run: the summed step losses over the step count);
* TRL's token counter, which a new trainer starts at zero, is set to the checkpoint's last
  count before training resumes (:func:`continue_token_count`), so the entries logged after the
  resume count from there; ``num_tokens`` (the whole training's tokens) joins the metrics.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: TRL's cumulative count of trained tokens in each log entry
TOKENS = "num_tokens"


def log_boundaries() -> Any:
    """A transformers callback that logs at every checkpoint and at the last step."""
    from transformers import TrainerCallback

    class LogAtCheckpointsAndEnd(TrainerCallback):
        """Forces a log entry when a checkpoint is saved and at the last step, so a resumed
        run's history covers every step, split exactly as an uninterrupted run's."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogAtCheckpointsAndEnd()


def continue_token_count(trainer: Any, checkpoint: str | None) -> None:
    """Start TRL's running token count (``_total_train_tokens``, which TRL does not save in a
    checkpoint) at the checkpoint's last logged ``num_tokens`` when resuming."""
    counts = [e[TOKENS] for e in _checkpoint_history(checkpoint) if TOKENS in e]
    if counts and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = type(trainer._total_train_tokens)(counts[-1])


def _checkpoint_history(checkpoint: str | None) -> list[dict[str, Any]]:
    """The log entries a checkpoint's ``trainer_state.json`` holds ([] without one)."""
    if not checkpoint:
        return []
    try:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            return [e for e in json.load(f).get("log_history") or [] if isinstance(e, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def whole_training(
    metrics: dict[str, Any], history: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, log history) of the whole training (see the module docstring)."""
    history = [dict(e) for e in history]
    metrics = dict(metrics)
    loss = _weighted_loss(history)
    if loss is not None:
        metrics["train_loss"] = loss
        for entry in history:
            if "train_loss" in entry:
                entry["train_loss"] = loss
    counts = [e[TOKENS] for e in history if TOKENS in e]
    if counts:
        metrics[TOKENS] = counts[-1]
    return metrics, history


def _weighted_loss(history: list[dict[str, Any]]) -> float | None:
    """The mean training loss over all logged steps (each entry averages its interval)."""
    total, steps, last = 0.0, 0, 0
    for entry in history:
        if "loss" in entry and "step" in entry and int(entry["step"]) > last:
            span = int(entry["step"]) - last
            total += float(entry["loss"]) * span
            steps += span
            last = int(entry["step"])
    return total / steps if steps else None
