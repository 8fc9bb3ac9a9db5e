"""The ``train`` stage end to end, from hand-written datasets-stage files in a run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from selflearn.core.errors import ArtifactError, ConfigError, StageError
from selflearn.core.pipeline import Pipeline
from selflearn.core.records import PreferencePair, SFTExample
from selflearn.core.store import ArtifactStore

from .conftest import ANSWERS, FAST, QUESTIONS, generate

SUMMARY = {
    "thresholds": {"tau_l": 0.5, "tau_k": 0.7},
    "scorer": {"scorer": "selfcheck-nli", "model": "potsawee/deberta-v3-large-mnli"},
    "removed": {"consistency": 3, "knowledge": 11},
    "would_fail": {"consistency": 5, "knowledge": 14},
    "filters": {"consistency": True, "knowledge": True},
    "dpo_pairs": 4,
}


def write_datasets(run_dir: str, n_pairs: int = 4, summary: dict[str, Any] = SUMMARY) -> None:
    store = ArtifactStore(run_dir)
    examples = [
        SFTExample(
            id=f"s{i}", question_id=f"q{i}", prompt=QUESTIONS[i], completion=ANSWERS[i],
            origin="self" if i % 3 else "rc", provenance={"passage_id": f"p{i}"},
        )
        for i in range(6)
    ]
    pairs = [
        PreferencePair(
            id=f"d{i}", question_id=f"q{i}", prompt=QUESTIONS[i], chosen=ANSWERS[i],
            rejected=ANSWERS[(i + 3) % 8], provenance={"s_k": 0.9, "s_l": 0.1},
        )
        for i in range(n_pairs)
    ]
    store.write_records("sft.jsonl", examples)
    store.write_records("dpo_pairs.jsonl", pairs)
    store.write_json("datasets_summary.json", summary)


def pipeline(run_dir: str, model: str, sft: bool = True, **extra: Any) -> Pipeline:
    config: dict[str, Any] = {
        "run_dir": run_dir,
        "model": model,
        "trainer": {"use": "trl-dpo", "options": {**FAST, "max_steps": 3, "max_prompt_length": 32}},
        "sft_trainer": {"use": "trl-sft", "options": {**FAST, "max_steps": 2}} if sft else None,
        **extra,
    }
    return Pipeline(config, load_entry_points=False)


def test_sft_then_dpo_records_models_losses_and_lineage(tiny_llama: str, run_dir: str) -> None:
    write_datasets(run_dir)
    summary = pipeline(run_dir, tiny_llama).stage("train").run()
    root = Path(run_dir)
    record = json.loads((root / "train.json").read_text())
    sft_dir, dpo_dir = root / "models" / "sft", root / "models" / "dpo"
    assert record["base_model"] == tiny_llama
    assert record["models"] == {"sft": str(sft_dir), "dpo": str(dpo_dir)}
    assert [p["step"] for p in record["loss"]["sft"]] == [1, 2]
    assert [p["step"] for p in record["loss"]["dpo"]] == [1, 2, 3]
    assert record["metrics"]["dpo"]["global_step"] == 3 and record["rows"] == {"sft": 6, "dpo": 4}
    assert summary["models"] == record["models"] and summary["rows"] == record["rows"]
    assert (root / "train_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dpo_card = json.loads((dpo_dir / "selflearn-lineage.json").read_text())
    up = dpo_card["lineage"]
    assert dpo_card["base_model"] == str(sft_dir)  # DPO starts from the SFT model
    assert up["base_model"] == tiny_llama and up["start_model"] == str(sft_dir)
    assert up["thresholds"] == SUMMARY["thresholds"] and up["scorer"] == SUMMARY["scorer"]
    assert up["filters"] == SUMMARY["removed"] and up["rows"] == 4
    assert up["would_fail"] == SUMMARY["would_fail"]
    assert up["source_file"] == "dpo_pairs.jsonl"
    assert up["source_file_hash"] == ArtifactStore(run_dir).hash("dpo_pairs.jsonl")
    assert dpo_card["data"]["rows"] == 4 and dpo_card["training"]["beta"] == 0.3
    readme = (dpo_dir / "README.md").read_text()
    assert "How the rows were selected" in readme and "tau_k" in readme and "selfcheck-nli" in readme
    sft_card = json.loads((sft_dir / "selflearn-lineage.json").read_text())
    assert sft_card["lineage"]["rows_by_origin"] == {"rc": 2, "self": 4}
    generate(dpo_dir)

    # a second run (e.g. after a kill once both models were saved) trains nothing again
    stamps = {d: json.loads((d / "selflearn-lineage.json").read_text())["finished"] for d in (sft_dir, dpo_dir)}
    again = pipeline(run_dir, tiny_llama).stage("train").run()
    assert again["models"] == summary["models"]
    for d, stamp in stamps.items():
        assert json.loads((d / "selflearn-lineage.json").read_text())["finished"] == stamp
    # new pairs: DPO retrains, SFT is reused
    write_datasets(run_dir, n_pairs=5)
    pipeline(run_dir, tiny_llama).stage("train").run()
    assert json.loads((sft_dir / "selflearn-lineage.json").read_text())["finished"] == stamps[sft_dir]
    assert json.loads((dpo_dir / "selflearn-lineage.json").read_text())["data"]["rows"] == 5


def test_dpo_only_starts_from_the_configured_model(tiny_llama: str, run_dir: str) -> None:
    write_datasets(run_dir)
    pipeline(run_dir, tiny_llama, sft=False).stage("train").run()
    record = json.loads((Path(run_dir) / "train.json").read_text())
    assert record["models"]["sft"] is None and record["loss"]["sft"] == []
    card = json.loads((Path(run_dir) / "models" / "dpo" / "selflearn-lineage.json").read_text())
    assert card["base_model"] == tiny_llama
    assert not os.path.exists(os.path.join(run_dir, "models", "sft"))


def test_empty_dpo_data_names_thresholds_and_filter_counts(tiny_llama: str, run_dir: str) -> None:
    write_datasets(run_dir, n_pairs=0)
    with pytest.raises(StageError) as info:
        pipeline(run_dir, tiny_llama).stage("train").run()
    text = str(info.value)
    assert "no DPO pairs" in text and '"tau_k": 0.7' in text and '"tau_l": 0.5' in text
    assert '"knowledge": 11' in text and '"consistency": 3' in text and "selfcheck-nli" in text
    assert "alone would remove" in text and '"knowledge": 14' in text
    assert not os.path.exists(os.path.join(run_dir, "models", "sft"))  # failed before SFT


def test_wrong_trainer_kind_and_remote_run_dir_are_clear_errors(tiny_llama: str, run_dir: str) -> None:
    write_datasets(run_dir)
    swapped = pipeline(run_dir, tiny_llama, sft=False, trainer={"use": "trl-sft", "options": FAST})
    with pytest.raises(ConfigError, match="trainer: .*data_kind is 'sft'"):
        swapped.stage("train").run()
    with pytest.raises(ConfigError, match="model"):
        Pipeline({"run_dir": run_dir}, load_entry_points=False).stage("train").validate()
    remote = "memory://selflearn-train-test"
    write_datasets(remote)
    with pytest.raises(ArtifactError, match="local filesystem"):
        pipeline(remote, tiny_llama).stage("train").run()


def test_selection_carries_the_pushed_dataset_to_the_card() -> None:
    from selflearn.core.stages.train import selection

    assert selection({"tau_l": 0.5, "hub_dataset": "me/rows"})["hub_dataset"] == "me/rows"
    assert "hub_dataset" not in selection({"tau_l": 0.5})


def test_loss_plot_of_a_short_run_draws_points_and_values() -> None:
    from selflearn.core.stages.train import loss_figure

    fig = loss_figure({"sft": [{"step": 1, "loss": 2.31}], "dpo": [{"step": 1, "loss": 0.6931}]},
                      {"dpo": [{"step": 1, "loss": 0.7}]})
    sft_ax, dpo_ax = fig.axes
    (line,) = sft_ax.lines
    assert line.get_marker() == "o" and list(line.get_xdata()) == [1]
    assert [t.get_text() for t in sft_ax.texts] == ["2.31"]
    assert sft_ax.get_xlim() == (0.0, 2.0) and list(sft_ax.get_xticks()) == [1]
    assert {t.get_text() for t in dpo_ax.texts} == {"0.693", "0.7"}
    assert [t.get_text() for t in sft_ax.get_legend().get_texts()] == ["train (1 logged)"]
    long_run = loss_figure({"dpo": [{"step": i, "loss": 1.0 / i} for i in range(1, 101)]}, {})
    assert long_run.axes[0].lines[0].get_marker() == "None" and not long_run.axes[0].texts
    (empty,) = loss_figure({}, {}).axes
    assert [t.get_text() for t in empty.texts] == ["no loss logged"]
