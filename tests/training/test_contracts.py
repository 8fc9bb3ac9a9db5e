"""Both built-in trainers pass ``selflearn.plugins.testing.check_trainer``: a few steps on the
tiny base model write a folder transformers loads and generates from (full, and an unmerged LoRA adapter
through peft)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selflearn.builtin.trainers import dpo, sft
from selflearn.plugins.testing import check_trainer

from .conftest import dpo_options, sft_options


@pytest.mark.parametrize("lora", [False, True])
def test_sft_trainer(tiny_base: str, tmp_path: Path, lora: bool) -> None:
    opts = sft_options(max_steps=2, **({"use_lora": True, "lora_r": 4, "lora_alpha": 8, "merge_adapters": False} if lora else {}))
    result = check_trainer(sft.SFTTrainer(opts), model=tiny_base, output_dir=tmp_path / "sft")
    assert (Path(result.model_path) / "adapter_config.json").exists() == lora


def test_dpo_trainer(tiny_base: str, tmp_path: Path) -> None:
    check_trainer(dpo.DPOTrainer(dpo_options(max_steps=2)), model=tiny_base, output_dir=tmp_path / "dpo")
