"""Stage ``sft_model`` (``flow: paper`` only): G_SFT, trained on the ``sft`` stage's rows.

The ``sft_trainer`` trains the base model on ``sft.jsonl`` into ``<train.models_dir>/sft`` and
the stage records it in ``sft_model.json`` (the model's path, the training fingerprint, rows,
metrics and loss history). The ``generations`` stage of this flow then answers with that model,
and the ``train`` stage runs DPO from it.

The rows and the training are two stages because they run on different processes under
accelerate launch / torchrun: the main process alone labels the rows with the model (the
``sft`` stage), while every process takes part in a training. The other processes wait for the
``sft`` stage as for any stage, then train G_SFT with the main process (``distributed``); only
the main process writes ``sft_model.json``.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from ..distributed import is_main_process
from ..errors import ArtifactError, StageError
from ..records import SFTExample
from ._sftdata import rows_by_origin
from .base import Stage
from .train import SFT_FILE, SFT_MODEL_FILE, TrainStage


class SFTModelStage(Stage):
    name = "sft_model"
    flow_sensitive = True
    requires = ("sft",)
    slots = ("sft_trainer",)
    flows = ("paper",)
    #: every process of an accelerate launch / torchrun run takes part in this training
    distributed = True

    def outputs(self) -> list[str]:
        return [SFT_MODEL_FILE]

    def _train_stage(self) -> TrainStage:
        """The ``train`` stage, whose options (models folder, training seed, lineage) and
        training routine this stage shares."""
        return TrainStage(self.run_ctx, self.run_ctx.stage_options["train"])

    def fingerprint_config(self) -> dict[str, Any]:
        """Also the ``train`` section (models folder, training seed, lineage), read from there."""
        config = super().fingerprint_config()
        config["train"] = attrs.asdict(self.run_ctx.stage_options["train"])
        return config

    def validate(self) -> None:
        super().validate()
        self._train_stage().validate()

    def estimate(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_calls": 0, "trainings": ["sft"]}
        if self.store.exists(SFT_FILE):
            out["sft_rows"] = sum(1 for _ in self.store.iter_jsonl(SFT_FILE))
        return out

    def run(self) -> dict[str, Any]:
        if not self.store.is_local:
            raise ArtifactError(
                f"the sft_model stage saves the SFT model under the run directory, which must be "
                f"on the local filesystem; got {self.store.url!r}"
            )
        rows = self.store.read_records(SFT_FILE, SFTExample)
        if not rows:
            raise StageError(f"{SFT_FILE} has no rows: the sft stage wrote none to train G_SFT on")
        record = self._train(rows)
        if is_main_process():  # under accelerate launch / torchrun the others only train
            self.store.write_json(SFT_MODEL_FILE, record)
        history = record["log_history"]
        return {
            "rows": len(rows),
            "model": record["model"],
            "final_loss": history[-1].get("loss") if history else None,
        }

    def _train(self, rows: list[SFTExample]) -> dict[str, Any]:
        """Train G_SFT from the run's model (reusing a finished model folder of this training)."""
        train = self._train_stage()
        base = str(self.run_ctx.model or "")
        self.run_ctx.release("backend")  # the trainer loads its own copy of the model
        models_root = self.store.local_path(train.options.models_dir)
        result, fingerprint = train.train_sft(rows, base, models_root, {"flow": "paper"})
        return {
            "model": os.path.abspath(result.model_path),
            "fingerprint": fingerprint,
            "base_model": base,
            "rows": len(rows),
            "rows_by_origin": rows_by_origin(rows),
            "metrics": result.metrics,
            "log_history": result.log_history,
        }
