"""The training orders (issue 23): ``flow: paper`` trains SFT first and generates the
preference data with the SFT model, then runs DPO from it; an SFT-only run (``trainer: null``)
runs to the end and is evaluated. Tiny random Llama, real hf backend, TRL and evaluation, CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selflearn import Document, Pipeline
from selflearn.core.errors import ConfigError

FAST = {
    "per_device_train_batch_size": 4, "logging_steps": 1, "gradient_checkpointing": False,
    "eval_fraction": 0.0, "save_steps": 0, "max_length": 64, "warmup_ratio": 0.0, "max_steps": 2,
}
TOPICS = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"]


def _corpus(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for i, topic in enumerate(TOPICS):
        (root / f"{topic.lower()}.md").write_text(
            f"# {topic}\n\n{topic} was founded in {1900 + i} by Ada Lovelace. It lies near Lake "
            f"Geneva and hosts {i + 2} museums.\n"
        )
    return str(root)


def _config(tmp_path: Path, model: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "run_dir": str(tmp_path / "run"),
        "model": model,
        "source": {"use": "files", "options": {"url": _corpus(tmp_path / "corpus"), "test_per_category": 2}},
        "chunker": {"use": "sentences", "options": {"max_tokens": 64}},
        "question_generator": "template",
        "backend": {"use": "hf", "options": {"batch_size": 16}},
        "scorer": "lexical",
        "generations": {"k": 2, "reference": {"max_new_tokens": 8}, "with_passage": {"max_new_tokens": 8},
                        "without_passage": {"max_new_tokens": 8}},
        # a random model's answers are noise: keep every pair so training runs
        "datasets": {"consistency_filter": False, "knowledge_filter": False, "truncated_samples": "keep",
                     "drop_truncated_reference": False, "self_label_max_new_tokens": 8,
                     "self_label_retries": 1},
        # the tiny tokenizer spells words in few-letter pieces: an RC prompt is ~1,900 tokens
        "sft_trainer": {"use": "trl-sft", "options": {**FAST, "max_length": 2048}},
        "trainer": {"use": "trl-dpo", "options": {**FAST, "max_prompt_length": 32}},
        "evaluate": {"max_new_tokens": 8, "known_items": 0, "bootstrap_resamples": 20},
    }
    config.update(overrides)
    return config


def test_paper_flow_generates_with_the_sft_model_and_trains_dpo_from_it(tiny_llama, tmp_path):
    config = _config(tmp_path, tiny_llama, flow="paper")
    outcomes = Pipeline(config).run()
    assert [o.name for o in outcomes] == [
        "documents", "passages", "questions", "sft", "sft_model", "generations", "scores", "datasets", "train",
        "evaluate",
    ]
    run = Path(config["run_dir"])
    sft_dir = str(run / "models" / "sft")
    # the random model's self-labels all run into the token limit: said, with the cause
    sft_summary = outcomes[3].summary
    assert any("self_label_max_new_tokens" in n for n in sft_summary["notes"]), sft_summary
    sft_record = json.loads((run / "sft_model.json").read_text())
    assert sft_record["model"] == sft_dir and sft_record["rows"] >= 1
    # the SFT rows were built before any generation, from the base model
    rows = [json.loads(x) for x in (run / "sft.jsonl").read_text().splitlines()]
    assert {r["origin"] for r in rows} <= {"rc", "self"} and rows
    assert all(r["provenance"]["generation"]["backend"]["model"] == tiny_llama for r in rows)
    # y*, Y_c and Y_r come from G_SFT
    gens = [json.loads(x) for x in (run / "generations.jsonl").read_text().splitlines()]
    assert gens and {g["provenance"]["backend"]["model"] for g in gens} == {sft_dir}
    # DPO starts from G_SFT; the evaluation compares DPO with G_SFT
    train = json.loads((run / "train.json").read_text())
    assert train["flow"] == "paper" and train["models"]["sft"] == sft_dir
    lineage = json.loads((run / "models" / "dpo" / "selflearn-lineage.json").read_text())
    assert lineage["base_model"] == sft_dir
    assert lineage["lineage"]["start_model"] == sft_dir and lineage["lineage"]["base_model"] == tiny_llama
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert sft_dir in json.dumps(report)
    # the datasets stage exported the sft stage's rows without rewriting them
    assert (run / "sft.parquet").exists()
    assert all(o.status == "skipped" for o in Pipeline(config).run())


def test_sft_only_run_goes_to_the_end_and_is_evaluated(tiny_llama, tmp_path):
    config = _config(tmp_path, tiny_llama, trainer=None)
    pipeline = Pipeline(config)
    plan = pipeline.plan()
    assert plan[-2]["stage"] == "train" and plan[-2]["estimate"]["trainings"] == ["sft"]
    outcomes = pipeline.run()
    assert outcomes[-1].name == "evaluate"
    run = Path(config["run_dir"])
    train = json.loads((run / "train.json").read_text())
    assert train["models"]["dpo"] is None and train["models"]["sft"] == str(run / "models" / "sft")
    report = (run / "report.md").read_text()
    assert str(run / "models" / "sft") in json.dumps(json.loads((run / "evaluation" / "report.json").read_text()))
    assert report


def test_flow_validation(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="flow"):
        Pipeline(_config(tmp_path, tiny_llama, flow="sideways"))
    with pytest.raises(ConfigError, match="nothing to train") as exc:
        Pipeline(_config(tmp_path, tiny_llama, trainer=None, sft_trainer=None)).plan()
    assert exc.value.path == "trainer"
    with pytest.raises(ConfigError, match="needs an sft_trainer"):
        Pipeline(_config(tmp_path, tiny_llama, flow="paper", sft_trainer=None)).plan()

    class Src:
        def documents(self):
            yield Document(id="d", title="T", text="T was founded in 1900.")

    from selflearn.builtin.backends.echo import EchoBackend, Options

    with pytest.raises(ConfigError, match="by name"):
        Pipeline(_config(tmp_path, tiny_llama, flow="paper", source=Src(), backend=EchoBackend(Options()))).plan()
    with pytest.raises(ConfigError, match="in flow 'current'"):
        Pipeline(_config(tmp_path, tiny_llama)).plan(until="sft")


def test_switching_the_flow_keeps_the_stages_before_the_sft(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
    Pipeline(_config(tmp_path, tiny_llama)).run(until="questions")
    plan = Pipeline(_config(tmp_path, tiny_llama, flow="paper")).plan(until="generations")
    assert [(r["stage"], r["status"]) for r in plan] == [
        ("documents", "done"), ("passages", "done"), ("questions", "done"), ("sft", "pending"),
        ("sft_model", "pending"), ("generations", "pending"),
    ]
