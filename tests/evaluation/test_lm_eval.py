"""Forgetting through lm-evaluation-harness, on a tiny local multiple-choice task (no hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.evaluation.lm_eval import (
    DEFAULT_METRICS,
    DEFAULT_TASKS,
    ForgettingOptions,
    compare,
    model_args,
    run_lm_eval,
)

pytest.importorskip("lm_eval")

ROWS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Berlin"], "label": 0},
    {"question": "Which tower is in Paris?", "choices": ["Big Ben", "Eiffel Tower"], "label": 1},
    {"question": "Who painted The Last Supper?", "choices": ["Leonardo da Vinci", "Picasso"], "label": 0},
    {"question": "Where is Mont Blanc?", "choices": ["the Alps", "the Andes", "Siberia"], "label": 0},
]


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("lm-eval-task")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "tiny.yaml").write_text(
        "task: selflearn_tiny_mc\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return str(folder)


def test_defaults_are_the_papers_tasks() -> None:
    assert DEFAULT_TASKS == {"arc_challenge": 0, "hellaswag": 0, "truthfulqa_mc2": 0,
                             "winogrande": 0, "mmlu": 5}
    assert set(DEFAULT_METRICS) == set(DEFAULT_TASKS)


def test_tiny_local_task_before_after(tiny_llama: str, tiny_task: str, tmp_path: Path) -> None:
    opts = ForgettingOptions(tasks={"selflearn_tiny_mc": 0}, metrics={"selflearn_tiny_mc": "acc_norm"},
                             include_path=tiny_task, device="cpu", batch_size=4, dtype="float32",
                             bootstrap_iters=50, margin=0.1)
    res = run_lm_eval(tiny_llama, opts, seed=1)
    task = res["tasks"]["selflearn_tiny_mc"]
    assert task["metric"] == "acc_norm" and task["n_shot"] == 0 and task["version"] == 1.0
    assert set(task["metrics"]) >= {"acc", "acc_norm"}
    assert 0.0 <= task["value"] <= 1.0 and task["value"] * len(ROWS) == round(task["value"] * len(ROWS))
    assert res["lm_eval_version"]
    # the same model scores the same: nothing flagged; a made-up drop beyond the margin is
    assert compare(res, res, 0.1)["flagged"] == []
    worse: dict[str, Any] = json.loads(json.dumps(res))
    worse["tasks"]["selflearn_tiny_mc"]["value"] = task["value"] - 0.25
    cmp = compare(res, worse, 0.1)
    assert cmp["flagged"] == ["selflearn_tiny_mc"]
    assert cmp["tasks"]["selflearn_tiny_mc"]["delta"] == pytest.approx(-0.25)
    assert compare(res, worse, 0.3)["flagged"] == []


def test_adapter_folder_loads_on_its_base(tmp_path: Path, tiny_llama: str) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny_llama}))
    assert model_args(str(adapter), "auto") == {"pretrained": tiny_llama, "peft": str(adapter), "dtype": "auto"}
    (adapter / "tokenizer_config.json").write_text("{}")
    assert model_args(str(adapter), "auto")["tokenizer"] == str(adapter)
    assert model_args(tiny_llama, "float32") == {"pretrained": tiny_llama, "dtype": "float32"}


@pytest.mark.parametrize("pad_token", ["[PAD]", "auto"])
def test_lm_eval_runs_on_a_trained_adapter_folder(
    tiny_llama: str, tiny_task: str, tmp_path: Path, pad_token: str
) -> None:
    """A real lm-eval run on a LoRA adapter folder, trained with a new pad token (embeddings one
    row longer than the base's) and with an existing one (same vocabulary)."""
    import json as _json

    from selflearn.builtin.trainers import sft
    from selflearn.core.protocols import TrainRequest

    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    cfg = _json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)  # a base checkpoint without a pad token, as SmolLM2's
    (base / "tokenizer_config.json").write_text(_json.dumps(cfg))
    out = tmp_path / "adapter"
    opts = sft.Options(max_steps=1, per_device_train_batch_size=2, logging_steps=1, eval_fraction=0.0,
                       save_steps=0, max_length=48, gradient_checkpointing=False, use_lora=True,
                       lora_r=2, lora_alpha=4, merge_adapters=False, learning_rate=1e-3, pad_token=pad_token)
    rows = [{"prompt": [{"role": "user", "content": r["question"]}],
             "completion": [{"role": "assistant", "content": r["choices"][r["label"]]}]} for r in ROWS]
    sft.SFTTrainer(opts).train(TrainRequest(rows=rows, model=str(base), output_dir=str(out)))
    assert model_args(str(out), "float32")["tokenizer"] == str(out)
    res = run_lm_eval(str(out), ForgettingOptions(
        tasks={"selflearn_tiny_mc": 0}, include_path=tiny_task, device="cpu", batch_size=4,
        dtype="float32", bootstrap_iters=0), seed=1)
    assert 0.0 <= res["tasks"]["selflearn_tiny_mc"]["value"] <= 1.0


def test_stage_forgetting_section(run_dir: str, tiny_llama: str, tiny_task: str) -> None:
    from selflearn import Pipeline
    from tests.evaluation.conftest import write_run

    root = write_run(run_dir, train_json={"base_model": tiny_llama, "models": {"sft": None, "dpo": tiny_llama}})
    cfg = {"run_dir": run_dir, "backend": "echo", "scorer": "lexical", "evaluate": {
        "known_items": 0, "max_new_tokens": 16,
        "forgetting": {"tasks": {"selflearn_tiny_mc": 0}, "metrics": {"selflearn_tiny_mc": "acc"},
                       "include_path": tiny_task, "device": "cpu", "dtype": "float32", "bootstrap_iters": 0}}}
    pipe = Pipeline(cfg, load_entry_points=False)
    summary = pipe.stage("evaluate").run()
    pipe.close()
    report = json.loads((root / "evaluation" / "report.json").read_text())
    row = report["forgetting"]["tasks"]["selflearn_tiny_mc"]
    assert row["before"] == row["after"] and row["delta"] == 0 and not row["flagged"]
    assert summary["forgetting_flagged"] == []
    assert "Forgetting (lm-evaluation-harness" in (root / "report.md").read_text()
