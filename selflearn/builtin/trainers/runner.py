"""The training flow shared by ``trl-sft`` and ``trl-dpo``.

1. Reuse a finished model folder whose fingerprint matches (data, input model, options, seed).
2. Build the TRL config first (under DeepSpeed ZeRO-3 it must exist before the model is loaded,
   so that the weights are partitioned as they load), then the tokenizer and the model.
3. Train, resuming from the last checkpoint in ``OUTPUT/checkpoints`` after a kill.
4. Save the weights (or the LoRA adapter, plus the merged model), the tokenizer, the model card
   and, last, ``selflearn-lineage.json``.

Subclasses say how to build the TRL config and trainer (:meth:`TRLTrainer._config`,
:meth:`TRLTrainer._trainer`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from ...core.hashing import content_hash
from ...core.models import resolve
from ...core.protocols import TrainRequest, TrainResult
from . import lineage as lin
from ._metrics import continue_token_count, log_boundaries, whole_training
from .common import (
    CommonOptions,
    Precision,
    check_rows,
    count_parameters,
    learning_rate_for,
    load_model,
    lora_config,
    memory_errors,
    prepare_tokenizer,
    resolve_precision,
    split_rows,
    to_dataset,
)

log = logging.getLogger("selflearn.trainers")


def _steps(value: float) -> float | int:
    return int(value) if value >= 1 else value


class TRLTrainer:
    """Base of the built-in trainers (see the module docstring)."""

    name: ClassVar[str] = ""
    method: ClassVar[str] = ""  # "sft" or "dpo"
    data_kind: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: CommonOptions) -> None:
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"trainer": self.name, "options": attrs.asdict(self.options)}

    # -- hooks for subclasses ----------------------------------------------------------------
    def _config(self, common: dict[str, Any], has_eval: bool) -> Any:
        raise NotImplementedError

    def _trainer(
        self,
        *,
        model: Any,
        args: Any,
        train_dataset: Any,
        eval_dataset: Any,
        tokenizer: Any,
        peft_config: Any,
        load_reference: Callable[[], Any],
        seed: int,
    ) -> Any:
        raise NotImplementedError

    def _normalize(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep only the fields TRL reads (provenance stays in the stage's files)."""
        return [{f: row[f] for f in self.fields} for row in rows]

    # -- the flow ----------------------------------------------------------------------------
    def train(self, request: TrainRequest) -> TrainResult:
        """Train on ``request.rows`` (see the module docstring for the flow): reuse a finished
        folder of the same fingerprint, else train (resuming from a checkpoint), save, and
        write the lineage last."""
        from accelerate import PartialState

        opts = self.options
        check_rows(request.rows, self.fields, self.method.upper())
        rows = self._normalize(request.rows)
        path = resolve(request.model)
        output_dir = os.path.abspath(os.path.expanduser(request.output_dir))
        fingerprint = self._fingerprint(rows, path, request.seed)
        done = lin.read_lineage(output_dir)
        if done is not None and done.get("fingerprint") == fingerprint:
            log.info("%s: %s is already trained on this data; reusing it", self.name, output_dir)
            return TrainResult(output_dir, done.get("metrics", {}), done.get("log_history", []))

        precision = resolve_precision(opts.precision)
        n_params = count_parameters(_config_source(path))
        lr = opts.learning_rate or learning_rate_for(
            self.method, n_params, opts.use_lora, opts.lora_lr_multiplier
        )
        train_rows, eval_rows = split_rows(rows, opts.eval_fraction, opts.min_eval_rows, request.seed)
        checkpoints = os.path.join(output_dir, lin.CHECKPOINTS)
        common = self._common_args(checkpoints, lr, precision, request.seed, bool(eval_rows))
        args = self._config(common, bool(eval_rows))  # sets up the distributed state (first)
        state = PartialState()
        if state.is_main_process:
            os.makedirs(output_dir, exist_ok=True)
            lin.prepare_output(output_dir, fingerprint)
        state.wait_for_everyone()

        tokenizer, added = prepare_tokenizer(path, opts)
        metrics, log_history = self._fit(
            request, args, path, tokenizer, precision, (train_rows, eval_rows), output_dir
        )
        metrics.update({"learning_rate": lr, "parameters": n_params})
        if state.is_main_process:
            if opts.use_lora and opts.merge_adapters:
                _merge(path, os.path.join(output_dir, "adapter"), output_dir, tokenizer, opts, precision)
            record = self._lineage(request, fingerprint, path, rows, (train_rows, eval_rows))
            record["training"].update({
                "learning_rate": lr,
                "learning_rate_source": "options" if opts.learning_rate else "by model size",
                "precision": precision.name,
                "world_size": state.num_processes,
                "pad_token_added": added,
                "parameters": n_params,
            })
            record.update({"metrics": _jsonable(metrics), "log_history": _jsonable(log_history),
                           "versions": lin.versions(), "finished": lin.now()})
            lin.write_lineage(output_dir, record)
            if not opts.keep_checkpoints:
                shutil.rmtree(checkpoints, ignore_errors=True)
        state.wait_for_everyone()
        return TrainResult(output_dir, _jsonable(metrics), _jsonable(log_history))

    def _fingerprint(self, rows: list[dict[str, Any]], path: str, seed: int) -> str:
        """What makes a trained folder reusable: trainer, options, data, input model, seed."""
        return content_hash(
            {
                "trainer": self.name,
                "options": attrs.asdict(self.options),
                "data": lin.data_hash(rows),
                "model": lin.model_identity(path),
                "seed": seed,
            }
        )

    def _fit(
        self,
        request: TrainRequest,
        args: Any,
        path: str,
        tokenizer: Any,
        precision: Precision,
        split: tuple[list[dict[str, Any]], list[dict[str, Any]]],
        output_dir: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Load the model, train (resuming from the newest checkpoint), evaluate, save; return
        the metrics and log history of the WHOLE training (:mod:`._metrics`)."""
        opts = self.options
        train_rows, eval_rows = split
        resume = last_checkpoint(os.path.join(output_dir, lin.CHECKPOINTS))
        if resume:
            log.info("%s: resuming from %s", self.name, resume)
        # loading, moving to the GPU (in the trainer's constructor) and training can all run
        # out of memory
        with memory_errors(request.model, opts, self.method.upper()):
            model = load_model(path, tokenizer, opts, precision)
            trainer = self._trainer(
                model=model,
                args=args,
                train_dataset=to_dataset(train_rows),
                eval_dataset=to_dataset(eval_rows) if eval_rows else None,
                tokenizer=tokenizer,
                peft_config=lora_config(opts),
                load_reference=lambda: load_model(path, tokenizer, opts, precision),
                seed=request.seed,
            )
            trainer.add_callback(log_boundaries())
            continue_token_count(trainer, resume)
            output = trainer.train(resume_from_checkpoint=resume)
            metrics: dict[str, Any] = dict(output.metrics)
            if eval_rows:
                metrics.update(trainer.evaluate())
        # the loss and token counts of the whole training, also after a resume
        metrics, log_history = whole_training(metrics, [dict(e) for e in trainer.state.log_history])
        best = trainer.state.best_model_checkpoint
        metrics.update(
            {
                "global_step": int(trainer.state.global_step),
                "resumed_from": os.path.basename(resume) if resume else None,
                "best_checkpoint": os.path.basename(best) if best else None,
            }
        )
        self._save(trainer, tokenizer, output_dir, path, precision)
        del trainer, model
        _free_memory()
        return metrics, log_history

    def _lineage(
        self,
        request: TrainRequest,
        fingerprint: str,
        path: str,
        rows: list[dict[str, Any]],
        split: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The lineage record's description of the run (the caller adds what training found)."""
        opts = self.options
        return {
            "method": self.method,
            "trainer": self.name,
            "fingerprint": fingerprint,
            "base_model": request.model,
            "resolved_base": path,
            "adapter": "adapter" if opts.use_lora and opts.merge_adapters else (
                "." if opts.use_lora else None
            ),
            "data": {
                "hash": lin.data_hash(rows),
                "rows": len(rows),
                "train_rows": len(split[0]),
                "eval_rows": len(split[1]),
            },
            "lineage": dict(request.lineage),
            "training": {**attrs.asdict(opts), "seed": request.seed},
        }

    def _common_args(
        self, checkpoints: str, lr: float, precision: Precision, seed: int, has_eval: bool
    ) -> dict[str, Any]:
        """TrainingArguments shared by both trainers (the subclass adds its own)."""
        import torch

        opts = self.options
        save = opts.save_steps > 0
        quiet = os.environ.get("SELFLEARN_NO_PROGRESS", "") not in ("", "0")
        if quiet:
            import datasets

            datasets.disable_progress_bars()
        common: dict[str, Any] = {
            "output_dir": checkpoints,
            "learning_rate": lr,
            "per_device_train_batch_size": opts.per_device_train_batch_size,
            "per_device_eval_batch_size": opts.per_device_eval_batch_size,
            "gradient_accumulation_steps": opts.gradient_accumulation_steps,
            "lr_scheduler_type": opts.lr_scheduler_type,
            "warmup_steps": opts.warmup_ratio,  # < 1: a fraction of the training steps
            "weight_decay": opts.weight_decay,
            "max_grad_norm": opts.max_grad_norm,
            "optim": opts.optim,
            "logging_steps": _steps(opts.logging_steps),
            "logging_first_step": True,
            "save_strategy": "steps" if save else "no",
            "save_steps": _steps(opts.save_steps) if save else 500,
            "save_total_limit": opts.save_total_limit,
            "eval_strategy": "steps" if has_eval else "no",
            "eval_steps": _steps(opts.eval_steps) if has_eval else None,
            "bf16": precision.bf16,
            "fp16": precision.fp16,
            **checkpointing_args(opts.gradient_checkpointing),
            "seed": seed,
            "data_seed": seed,
            "max_length": opts.max_length,
            "report_to": opts.report_to,
            "disable_tqdm": quiet,
            "dataloader_pin_memory": torch.cuda.is_available(),
            # without a GPU, train on the CPU (several CPU processes then use DDP over gloo)
            "use_cpu": not torch.cuda.is_available(),
            "num_train_epochs": opts.num_train_epochs,
            "max_steps": opts.max_steps,
        }
        return common

    def _save(self, trainer: Any, tokenizer: Any, output_dir: str, base: str, precision: Precision) -> None:
        """Weights (or the adapter) and tokenizer; every process takes part (ZeRO-3/FSDP gather)."""
        opts = self.options
        if getattr(trainer, "is_fsdp_enabled", False):
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        target = os.path.join(output_dir, "adapter") if opts.use_lora and opts.merge_adapters else output_dir
        trainer.save_model(target)
        if trainer.is_world_process_zero():
            sort_target_modules(target)
            tokenizer.save_pretrained(target)
            if target != output_dir:
                tokenizer.save_pretrained(output_dir)


def checkpointing_args(enabled: bool) -> dict[str, Any]:
    """The activation-checkpointing arguments under the installed transformers' names:
    transformers renamed ``gradient_checkpointing`` (and its ``_kwargs``) to
    ``activation_checkpointing``, and 5.25 warns on the old names until v6 removes them, while
    older releases of our range know only the old ones. Our option keeps its name
    (``gradient_checkpointing``, as in TRL's docs)."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def sort_target_modules(folder: str) -> None:
    """Rewrite ``adapter_config.json`` with ``target_modules`` sorted. PEFT keeps them as a set
    and writes them in its hash order, which differs per process (``PYTHONHASHSEED``): the same
    adapter trained again (a resumed run) got other bytes, hence another weight fingerprint and
    cache keys downstream."""
    path = os.path.join(folder, "adapter_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True))


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def last_checkpoint(folder: str) -> str | None:
    """The newest complete checkpoint (``trainer_state.json`` is written last; a kill during a
    save leaves a folder without it, which is skipped)."""
    if not os.path.isdir(folder):
        return None
    steps = []
    for name in os.listdir(folder):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(folder, name)):
            steps.append((int(match.group(1)), name))
    for _, name in sorted(steps, reverse=True):
        if os.path.isfile(os.path.join(folder, name, "trainer_state.json")):
            return os.path.join(folder, name)
    return None


def _config_source(path: str) -> str:
    """The folder whose config describes the model (an adapter folder's base)."""
    adapter = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter) and not os.path.isfile(os.path.join(path, "config.json")):
        with open(adapter, encoding="utf-8") as f:
            return str(json.load(f)["base_model_name_or_path"])
    return path


def _merge(
    base: str, adapter: str, output_dir: str, tokenizer: Any, opts: CommonOptions, precision: Precision
) -> None:
    """Merge the saved adapter into a freshly loaded (never quantized) base and save it.

    Reloading rather than merging in place works the same for QLoRA (4-bit weights cannot be
    merged into) and for sharded ZeRO-3/FSDP models.
    """
    from peft import PeftModel
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    if is_deepspeed_zero3_enabled():
        # this runs on the main process alone: a ZeRO-3 partitioned load would wait forever
        # for the other processes (training is over, so the setting is no longer needed)
        unset_hf_deepspeed_config()
    model = load_model(base, tokenizer, opts, precision, quantized=False)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def _jsonable(value: Any) -> Any:
    """Metrics and logs as plain JSON values (numpy/torch scalars become floats)."""
    return json.loads(json.dumps(value, default=lambda v: float(v) if hasattr(v, "__float__") else str(v)))
