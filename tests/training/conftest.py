"""Fixtures of the training tests: tiny checkpoints, rows, and fast trainer options.

Every test runs the real TRL / PEFT / transformers code paths on a 2-layer Llama with 38k
parameters, a handful of rows and a few steps, on one CPU thread (the machine is shared).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_tiny_llama

QUESTIONS = [
    "Where is the Eiffel Tower?",
    "How high is Mont Blanc?",
    "Who painted The Last Supper?",
    "What is a white dwarf?",
    "What does Keynesian economics hold?",
    "What is RNA editing?",
    "When was Nirvana formed?",
    "What is the capital of France?",
]
ANSWERS = [
    "The Eiffel Tower is in Paris, France.",
    "Mont Blanc rises 4,805 metres above sea level.",
    "The Last Supper was painted by Leonardo da Vinci.",
    "A white dwarf is a stellar core remnant.",
    "Aggregate demand drives output in the short run.",
    "RNA editing changes the sequence of an RNA molecule.",
    "Nirvana was formed in Aberdeen, Washington, in 1987.",
    "Paris is the capital of France.",
]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("SELFLEARN_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama like ``tiny_llama`` but a *base* checkpoint: no chat template, no pad token."""
    path = build_tiny_llama(tmp_path_factory.mktemp("tiny-base"), seed=1)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    model_cfg = json.loads((path / "config.json").read_text())
    model_cfg["pad_token_id"] = None
    (path / "config.json").write_text(json.dumps(model_cfg))
    return str(path)


def sft_rows(n: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "completion": [{"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}],
        }
        for i in range(n)
    ]


def pref_rows(n: int = 4) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": QUESTIONS[i]}],
            "chosen": [{"role": "assistant", "content": ANSWERS[i]}],
            "rejected": [{"role": "assistant", "content": ANSWERS[(i + 3) % len(ANSWERS)]}],
        }
        for i in range(n)
    ]


FAST = {
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "logging_steps": 1,
    "gradient_checkpointing": False,
    "eval_fraction": 0.0,
    "save_steps": 0,
    "max_length": 64,
    "warmup_ratio": 0.0,
}


def sft_options(**kw: Any) -> Any:
    from selflearn.builtin.trainers import sft

    return sft.Options(**{**FAST, "max_steps": 4, "learning_rate": 1e-3, **kw})


def dpo_options(**kw: Any) -> Any:
    from selflearn.builtin.trainers import dpo

    return dpo.Options(
        **{**FAST, "max_steps": 4, "learning_rate": 1e-3, "max_prompt_length": 32, **kw}
    )


def generate(folder: str | Path, prompt: str = "Where is the Eiffel Tower?") -> str:
    """Load a saved model folder with plain transformers and generate a few tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    return str(tok.decode(out[0, ids["input_ids"].shape[1]:]))
