"""Forgetting: the paper's Open-LLM-Leaderboard tasks through lm-evaluation-harness.

The paper (Table 1, method.md 13.3) checks that self-training does not cost general ability:
ARC, HellaSwag, TruthfulQA, Winogrande (0-shot) and MMLU (5-shot), accuracy, before and after
training. It does not name the variants; we record ours in the report:

==================  ======  ==============  =============================================
task (lm-eval)      shots   metric          why
==================  ======  ==============  =============================================
``arc_challenge``   0       ``acc_norm``    the leaderboard's ARC (challenge set, length-normalised)
``hellaswag``       0       ``acc_norm``    the leaderboard's HellaSwag metric
``truthfulqa_mc2``  0       ``acc``         the leaderboard's TruthfulQA (MC2: normalised
                                            probability mass on the true answers)
``winogrande``      0       ``acc``         the leaderboard's metric
``mmlu``            5       ``acc``         the group's mean over its 57 subjects
==================  ======  ==============  =============================================

Every metric lm-eval returns is kept, with its standard error. A task is *flagged* when its
metric drops by more than ``margin`` (absolute, on the 0..1 scale) from before to after.

``lm-eval`` is an optional dependency (``pip install lm-eval==0.4.13``); its datasets come
from the Hugging Face hub, so the standard tasks need network access (or a warm
``HF_DATASETS_CACHE``). Custom tasks (YAML files in ``include_path``, e.g. a local JSONL
multiple-choice set with ``dataset_path: json``) run offline; the tests use one.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import attrs

from ...core.errors import ConfigError, StageError
from ...core.models import folder_files
from ...core.options import bounded

PIP_HINT = "pip install lm-eval==0.4.13"

DEFAULT_TASKS: dict[str, int] = {
    "arc_challenge": 0,
    "hellaswag": 0,
    "truthfulqa_mc2": 0,
    "winogrande": 0,
    "mmlu": 5,
}
DEFAULT_METRICS: dict[str, str] = {
    "arc_challenge": "acc_norm",
    "hellaswag": "acc_norm",
    "truthfulqa_mc2": "acc",
    "winogrande": "acc",
    "mmlu": "acc",
}


@attrs.frozen
class ForgettingOptions:
    """The ``evaluate.forgetting`` section (off unless given)."""

    #: lm-eval task (or group) name -> number of few-shot examples
    tasks: dict[str, Any] = attrs.field(factory=lambda: dict(DEFAULT_TASKS))
    #: task -> the metric compared before/after (a task not listed uses "acc")
    metrics: dict[str, Any] = attrs.field(factory=lambda: dict(DEFAULT_METRICS))
    #: flag a task whose metric falls by more than this (absolute, 0..1 scale)
    margin: float = bounded(0.02, ge=0, le=1)
    #: examples per task (an int, or a fraction < 1); None: all (use only for smoke tests)
    limit: float | None = bounded(None, gt=0)
    #: lm-eval's batch size (an integer or "auto")
    batch_size: int | str = bounded(8, ge=1)
    #: torch device ("cpu", "cuda", "cuda:0"); None: cuda when available, else cpu
    device: str | None = None
    #: model dtype passed to lm-eval's HF model ("auto", "bfloat16", "float32", ...)
    dtype: str = "auto"
    #: a folder of custom lm-eval task YAML files to make available
    include_path: str | None = None
    #: render prompts with the model's chat template (the leaderboard did not)
    apply_chat_template: bool = False
    #: bootstrap resamples lm-eval uses for standard errors
    bootstrap_iters: int = bounded(1000, ge=0, le=1_000_000)


def require_lm_eval(path: str = "evaluate.forgetting") -> None:
    """A clear error when lm-eval is not installed (checked without importing it)."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            f"forgetting evaluation needs lm-evaluation-harness, which is not installed; "
            f"install it with `{PIP_HINT}` (or leave evaluate.forgetting unset)",
            path,
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def model_args(ref: str, dtype: str) -> dict[str, Any]:
    """lm-eval HF model arguments for a model reference (a LoRA adapter folder loads on its
    base model through ``peft``).

    An adapter folder's own tokenizer goes with it: a run that added a pad token trained
    embeddings one row longer than the base's, and lm-eval grows the base to the tokenizer it
    is given before it loads the adapter (with the base's tokenizer the load fails with a
    size mismatch).
    """
    from ...core.models import resolve

    path = resolve(ref)
    args: dict[str, Any] = {"pretrained": path, "dtype": dtype}
    adapter = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter):
        with open(adapter, encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
        if not base:
            raise StageError(f"LoRA adapter {path!r} does not name its base model")
        args = {"pretrained": resolve(base), "peft": path, "dtype": dtype}
        if any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES):
            args["tokenizer"] = path
    return args


def model_fingerprint(ref: str) -> Any:
    """Names, sizes and modification times of a model folder's files: a cheap cache key that
    changes when a model is retrained at the same path."""
    path = os.path.expanduser(ref)
    if not os.path.isdir(path):
        return ref
    return [ref, folder_files(path)]


def _task_result(raw: dict[str, Any], task: str, metric: str) -> dict[str, Any]:
    results = raw.get("results", {})
    if task not in results:
        raise StageError(f"lm-eval returned no result for task {task!r} (got {sorted(results)})")
    row = results[task]
    values = {
        k.split(",")[0]: v
        for k, v in row.items()
        if "," in k and not k.split(",")[0].endswith("_stderr") and isinstance(v, (int, float))
    }
    stderrs = {
        k.split(",")[0][: -len("_stderr")]: v
        for k, v in row.items()
        if "," in k and k.split(",")[0].endswith("_stderr") and isinstance(v, (int, float))
    }
    if metric not in values:
        raise StageError(
            f"lm-eval task {task!r} has no metric {metric!r} (it reported {sorted(values)}); "
            "set evaluate.forgetting.metrics"
        )
    return {
        "metric": metric,
        "value": float(values[metric]),
        "stderr": stderrs.get(metric),
        "metrics": values,
        "stderrs": stderrs,
        "n_shot": raw.get("n-shot", {}).get(task),
        "version": raw.get("versions", {}).get(task),
        "n_samples": raw.get("n-samples", {}).get(task),
    }


def run_lm_eval(ref: str, options: ForgettingOptions, *, seed: int = 42) -> dict[str, Any]:
    """Run the tasks on one model; one entry per task with its metric, value and stderr."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = options.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = HFLM(**model_args(ref, options.dtype), device=device, batch_size=options.batch_size)
    manager = TaskManager(include_path=options.include_path) if options.include_path else TaskManager()
    by_shots: dict[int, list[str]] = {}
    for task, shots in options.tasks.items():
        by_shots.setdefault(int(shots), []).append(task)
    tasks: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    for shots, names in sorted(by_shots.items()):
        limit: float | None = options.limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        raw = simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=shots,
            limit=limit,
            task_manager=manager,
            bootstrap_iters=options.bootstrap_iters,
            log_samples=False,
            apply_chat_template=options.apply_chat_template,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        if raw is None:
            raise StageError("lm-eval returned no results (not the main process?)")
        for name in names:
            tasks[name] = _task_result(raw, name, str(options.metrics.get(name, "acc")))
        versions.update(raw.get("versions", {}))
    import lm_eval

    del lm
    return {
        "model": ref,
        "device": device,
        "tasks": tasks,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "versions": versions,
    }


def compare(before: dict[str, Any], after: dict[str, Any], margin: float) -> dict[str, Any]:
    """Per task: before, after, delta (after - before); tasks whose metric fell by more than
    ``margin`` are listed in ``flagged``."""
    rows: dict[str, Any] = {}
    flagged: list[str] = []
    for task, b in before["tasks"].items():
        a = after["tasks"].get(task)
        if a is None:
            continue
        delta = a["value"] - b["value"]
        drop = delta < -margin
        rows[task] = {
            "metric": b["metric"],
            "n_shot": b.get("n_shot"),
            "before": b["value"],
            "before_stderr": b.get("stderr"),
            "after": a["value"],
            "after_stderr": a.get("stderr"),
            "delta": delta,
            "flagged": drop,
        }
        if drop:
            flagged.append(task)
    values_b = [r["before"] for r in rows.values()]
    values_a = [r["after"] for r in rows.values()]
    return {
        "margin": margin,
        "tasks": rows,
        "flagged": flagged,
        "average": {
            "before": sum(values_b) / len(values_b) if values_b else None,
            "after": sum(values_a) / len(values_a) if values_a else None,
        },
    }
