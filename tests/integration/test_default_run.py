"""The main job (issue 8): the embedded offline default run, end to end.

``test_default_run_tiny`` runs the default configuration with the model swapped for the tiny
random Llama, template questions and a handful of documents, so the whole path (real
Wikipedia leads, hf backend, MiniLM scorer, TRL DPO with LoRA, evaluation and report) runs in
CI in under a minute. ``test_default_run_real_model`` is the same run, reduced, on the real
SmolLM2-135M-Instruct: several minutes on a 2-core CPU, so it is marked ``mainjob`` and left
out of the README's test command (run it with ``pytest -m mainjob``); the main job itself is
the full run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.config import default_config, load_yaml, merge

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_the_embedded_default():
    assert load_yaml(ROOT / "examples" / "offline-default.yaml") == default_config()


def _reduced(run_dir: str, **overrides: Any) -> dict[str, Any]:
    config = merge(
        default_config(),
        {
            "run_dir": run_dir,
            "source": {
                "use": "wikipedia-offline",
                "options": {
                    "categories": ["History", "Geography"],
                    "train_per_category": 3,
                    "test_per_category": 1,
                    "min_words": 40,
                },
            },
            "generations": {"k": 2},
            "trainer": {
                "use": "trl-dpo",
                "options": {
                    "use_lora": True, "lora_r": 4, "lora_alpha": 8, "max_steps": 3,
                    "learning_rate": 5.0e-5, "per_device_train_batch_size": 2,
                    "max_prompt_length": 64, "max_length": 128, "save_steps": 0,
                },
            },
            "evaluate": {"max_new_tokens": 16, "known_items": 2, "qa": ["trivia:general"], "qa_limit": 3,
                         "bootstrap_resamples": 50},
        },
    )
    return merge(config, overrides)


def _check_report(run_dir: Path) -> dict[str, Any]:
    for name in ("documents.jsonl", "passages.jsonl", "questions.jsonl", "test_questions.jsonl",
                 "generations.jsonl", "scores.jsonl", "dpo_pairs.jsonl", "datasets_summary.json",
                 "scores_hist.png", "train.json", "train_loss.png", "report.md",
                 "evaluation/report.json"):
        assert (run_dir / name).exists(), name
    train = json.loads((run_dir / "train.json").read_text())
    lineage = json.loads((Path(train["models"]["dpo"]) / "selflearn-lineage.json").read_text())
    assert lineage["data"]["rows"] >= 1
    report = json.loads((run_dir / "evaluation" / "report.json").read_text())
    text = (run_dir / "report.md").read_text()
    assert "documents" in text and "dpo" in text.lower()
    return report


def test_default_run_tiny(tiny_llama, tmp_path):
    run_dir = tmp_path / "run"
    config = _reduced(
        str(run_dir),
        model=tiny_llama,
        question_generator="template",
        generations={"reference": {"max_new_tokens": 12}, "with_passage": {"max_new_tokens": 12},
                     "without_passage": {"max_new_tokens": 12}},
        # a random model's answers are noise: keep every pair so training runs
        datasets={"consistency_filter": False, "knowledge_filter": False, "truncated_samples": "keep",
                  "drop_truncated_reference": False},
    )
    outcomes = Pipeline(config).run()
    assert [o.name for o in outcomes][-1] == "evaluate"
    report = _check_report(run_dir)
    assert report
    # a second run of the same command does nothing
    again = Pipeline(config).run()
    assert {o.status for o in again} == {"skipped"}


@pytest.mark.slow
@pytest.mark.mainjob
def test_default_run_real_model(tmp_path):
    run_dir = tmp_path / "run"
    config = _reduced(str(run_dir), datasets={"consistency_filter": False})
    Pipeline(config).run()
    _check_report(run_dir)
