"""Options, learning rates, precision, QLoRA checks, splits and error translation."""

from __future__ import annotations

import importlib.util

import pytest

from selflearn.builtin.trainers import common, dpo, sft
from selflearn.core.errors import ConfigError, StageError
from selflearn.core.options import build_options


def test_paper_defaults() -> None:
    s, d = sft.Options(), dpo.Options()
    assert (s.learning_rate, s.num_train_epochs, s.max_steps, s.lr_scheduler_type) == (None, 2.0, -1, "cosine")
    assert (s.warmup_ratio, s.max_length, s.per_device_train_batch_size, s.eval_fraction) == (0.03, 1024, 8, 0.05)
    assert s.load_best_model_at_end and s.completion_only_loss and not s.use_lora
    assert (d.beta, d.max_steps, d.warmup_ratio, d.max_prompt_length, d.max_length) == (0.3, 300, 0.1, 128, 512)
    assert (d.per_device_train_batch_size, d.gradient_accumulation_steps, d.loss_type) == (8, 1, "sigmoid")


def test_learning_rate_by_model_size() -> None:
    small, large = 1_100_000_000, 7_000_000_000
    assert common.learning_rate_for("sft", small, False, 10) == 2e-5
    assert common.learning_rate_for("sft", large, False, 10) == 1e-5
    assert common.learning_rate_for("dpo", small, False, 10) == 1e-6
    assert common.learning_rate_for("dpo", large, False, 10) == 5e-7
    assert common.learning_rate_for("dpo", small, True, 10) == pytest.approx(1e-5)


def test_count_parameters_reads_no_weights(tiny_llama: str) -> None:
    from transformers import AutoModelForCausalLM

    n = common.count_parameters(tiny_llama)
    assert n == AutoModelForCausalLM.from_pretrained(tiny_llama).num_parameters()


def test_options_are_validated_with_config_paths() -> None:
    with pytest.raises(ConfigError, match="trainer.options: max_prompt_length"):
        build_options(dpo.Options, {"max_prompt_length": 512, "max_length": 256}, "trainer.options")
    with pytest.raises(ConfigError, match="set use_lora: true"):
        build_options(sft.Options, {"load_in_4bit": True}, "sft_trainer.options")
    with pytest.raises(ConfigError, match=r"eval_fraction: must be >= 0 and < 1, got 1.5"):
        build_options(sft.Options, {"eval_fraction": 1.5}, "sft_trainer.options")
    with pytest.raises(ConfigError, match="save_steps"):
        build_options(sft.Options, {"save_steps": 2.5}, "sft_trainer.options")
    opts = build_options(dpo.Options, {"learning_rate": "5e-7", "lora_target_modules": ["q_proj"]}, "t")
    assert opts.learning_rate == 5e-7 and opts.lora_target_modules == ["q_proj"]


def test_precision_on_this_machine() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    assert common.resolve_precision("auto").name == "fp32"
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        common.resolve_precision("bf16")


def test_qlora_without_bitsandbytes_or_gpu_is_a_clear_error() -> None:
    import torch

    if importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available():
        pytest.skip("QLoRA is available here")
    opts = sft.Options(use_lora=True, load_in_4bit=True)
    with pytest.raises(ConfigError, match="load_in_4bit: .*(bitsandbytes|CUDA GPU)"):
        common.quantization_config(opts, common.Precision("fp32"))


def test_custom_chat_template_string(tiny_llama: str) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tok, added = common.prepare_tokenizer(tiny_llama, sft.Options(chat_template=template))
    assert not added  # the fixture has a real pad token
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "[user] hi\n"
    own, _ = common.prepare_tokenizer(tiny_llama, sft.Options())
    assert "<|im_start|>" in own.chat_template  # auto keeps the model's own template


def test_split_is_seeded_and_respects_the_minimum() -> None:
    rows = [{"prompt": str(i), "completion": "a"} for i in range(40)]
    train, held = common.split_rows(rows, 0.05, 2, seed=42)
    assert len(held) == 2 and len(train) == 38
    assert common.split_rows(rows, 0.05, 2, seed=42) == (train, held)
    assert common.split_rows(rows, 0.05, 2, seed=7)[1] != held
    assert common.split_rows(rows[:10], 0.05, 2, seed=42) == (rows[:10], [])  # 0.5 rows: none


def test_out_of_memory_becomes_an_actionable_error() -> None:
    import torch

    opts = sft.Options(per_device_train_batch_size=16)
    with pytest.raises(StageError) as info, common.memory_errors("big/model", opts, "SFT"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    text = str(info.value)
    assert "big/model" in text and "ran out of" in text
    assert "use_lora: true" in text and "per_device_train_batch_size (now 16)" in text
    lora = sft.Options(use_lora=True)
    with pytest.raises(StageError, match="load_in_4bit: true"), common.memory_errors("m", lora, "DPO"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
    with pytest.raises(RuntimeError, match="unrelated"), common.memory_errors("m", opts, "SFT"):
        raise RuntimeError("unrelated failure")


def _tokenizer(special: list[str], **named: str) -> object:
    """A fast tokenizer over a few words whose special tokens are ``special``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*special, "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=named.get("unk_token", "hello")))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.add_special_tokens({"additional_special_tokens": [t for t in special if t not in named.values()]})
    return fast


@pytest.mark.parametrize(
    ("special", "named", "expected"),
    [
        (["</s>", "<unk>", "<|finetune_right_pad_id|>"], {"eos_token": "</s>", "unk_token": "<unk>"},
         "<|finetune_right_pad_id|>"),
        (["</s>", "<unk>", "<|reserved_special_token_0|>"], {"eos_token": "</s>", "unk_token": "<unk>"}, "<unk>"),
        (["<|endoftext|>", "<|reserved_special_token_3|>"],
         {"eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, "<|reserved_special_token_3|>"),
        (["<|endoftext|>", "<|im_start|>"], {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"},
         "<|endoftext|>"),
    ],
)
def test_pad_token_reuses_an_existing_token(special: list[str], named: dict[str, str], expected: str) -> None:
    tok = _tokenizer(special, **named)
    n = len(tok)  # type: ignore[arg-type]
    assert common.choose_pad_token(tok) == expected
    assert len(tok) == n  # type: ignore[arg-type]
