"""``trl-sft`` and ``trl-dpo`` on a tiny random Llama: real TRL/PEFT code paths, few steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from selflearn.builtin.trainers import dpo, sft
from selflearn.core.errors import StageError
from selflearn.core.protocols import Trainer, TrainRequest

from .conftest import dpo_options, generate, pref_rows, sft_options, sft_rows


def _weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(str(folder), "model.safetensors"))


def test_protocol_and_data_kinds() -> None:
    assert isinstance(sft.create(sft.Options(), None), Trainer)
    assert isinstance(dpo.create(dpo.Options(), None), Trainer)
    assert sft.SFTTrainer(sft.Options()).data_kind == "sft"
    assert dpo.DPOTrainer(dpo.Options()).data_kind == "preference"


def test_sft_full_finetune_keeps_best_checkpoint_and_generates(tiny_llama: str, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    opts = sft_options(max_steps=4, eval_fraction=0.25, eval_steps=2, save_steps=2)
    lineage = {"thresholds": {"tau_l": 0.5, "tau_k": 0.5}, "scorer": {"scorer": "lexical"}}
    result = sft.SFTTrainer(opts).train(
        TrainRequest(rows=sft_rows(12), model=tiny_llama, output_dir=str(out), lineage=lineage)
    )
    assert result.model_path == str(out)
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "selflearn-lineage.json"} <= names
    assert "checkpoints" not in names  # removed after a successful run
    # the best checkpoint by evaluation loss was selected and evaluated
    assert result.metrics["best_checkpoint"].startswith("checkpoint-")
    assert "eval_loss" in result.metrics and result.metrics["global_step"] == 4
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert len(losses) == 4
    # weights moved away from the base
    before, after = _weights(tiny_llama), _weights(out)
    assert any(not before[k].equal(after[k]) for k in before)
    card = json.loads((out / "selflearn-lineage.json").read_text())
    assert card["method"] == "sft" and card["base_model"] == tiny_llama
    assert card["data"]["rows"] == 12 and card["data"]["eval_rows"] == 3
    assert card["data"]["train_rows"] == 9 and len(card["data"]["hash"]) == 32
    assert card["lineage"] == lineage
    assert card["training"]["learning_rate"] == 1e-3 and card["training"]["seed"] == 42
    readme = (out / "README.md").read_text()
    assert "tau_k" in readme and "lexical" in readme and card["data"]["hash"] in readme
    assert isinstance(generate(out), str)


def test_finished_folder_is_reused_not_retrained(tiny_llama: str, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    request = TrainRequest(rows=sft_rows(4), model=tiny_llama, output_dir=str(out))
    first = sft.SFTTrainer(sft_options(max_steps=2)).train(request)
    stamp = json.loads((out / "selflearn-lineage.json").read_text())["finished"]
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    again = sft.SFTTrainer(sft_options(max_steps=2)).train(request)
    assert again.log_history == first.log_history
    assert json.loads((out / "selflearn-lineage.json").read_text())["finished"] == stamp
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    # other data: trained again
    other = TrainRequest(rows=sft_rows(5), model=tiny_llama, output_dir=str(out))
    sft.SFTTrainer(sft_options(max_steps=2)).train(other)
    assert json.loads((out / "selflearn-lineage.json").read_text())["data"]["rows"] == 5


def test_base_model_gets_zephyr_template_and_a_pad_token(tiny_base: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "sft"
    sft.SFTTrainer(sft_options(max_steps=2, pad_token="[PAD]")).train(
        TrainRequest(rows=sft_rows(4), model=tiny_base, output_dir=str(out))
    )
    tok = AutoTokenizer.from_pretrained(str(out))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"<|user|>\nQ?{tok.eos_token}\n<|assistant|>\n"
    assert tok.pad_token == "[PAD]" and tok.pad_token_id != tok.eos_token_id
    weights = _weights(out)
    base = _weights(tiny_base)
    emb = weights["model.embed_tokens.weight"]
    assert emb.shape[0] == len(tok) == base["model.embed_tokens.weight"].shape[0] + 1
    # the pad row of the input embeddings gets no gradient: still the mean of the base rows
    assert emb[-1].allclose(base["model.embed_tokens.weight"].mean(0), atol=1e-6)
    lineage = json.loads((out / "selflearn-lineage.json").read_text())
    assert lineage["training"]["pad_token_added"] is True
    generate(out)


def test_new_pad_rows_are_mean_embeddings(tiny_base: str) -> None:
    from safetensors.torch import load_file

    from selflearn.builtin.trainers.common import load_model, prepare_tokenizer, resolve_precision

    opts = sft_options(pad_token="[PAD]")
    tok, added = prepare_tokenizer(tiny_base, opts)
    assert added and tok.pad_token == "[PAD]"
    model = load_model(tiny_base, tok, opts, resolve_precision("fp32"))
    base = load_file(os.path.join(tiny_base, "model.safetensors"))
    for name, module in (("model.embed_tokens.weight", model.get_input_embeddings()),
                         ("lm_head.weight", model.get_output_embeddings())):
        assert module.weight.shape[0] == len(tok) == base[name].shape[0] + 1
        assert module.weight[:-1].equal(base[name])
        assert module.weight[-1].detach().allclose(base[name].mean(0))
    assert model.config.pad_token_id == tok.pad_token_id


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_lora_pads_with_an_existing_token_and_saves_no_embeddings(tiny_base: str, tmp_path: Path) -> None:
    """pad_token auto reuses the base's reserved ``<pad>``: same vocabulary as the base, and the
    adapter holds only LoRA matrices; an explicit new token resizes and saves the embeddings."""
    from transformers import AutoTokenizer

    lora = {"use_lora": True, "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "merge_adapters": False}
    sizes = {}
    for pad in ("auto", "[PAD]"):
        out = tmp_path / pad.strip("[]")
        sft.SFTTrainer(sft_options(max_steps=1, pad_token=pad, **lora)).train(
            TrainRequest(rows=sft_rows(4), model=tiny_base, output_dir=str(out))
        )
        tensors = _adapter_tensors(out)
        sizes[pad] = sum(t.numel() for t in tensors.values())
        tok = AutoTokenizer.from_pretrained(str(out))
        lineage = json.loads((out / "selflearn-lineage.json").read_text())
        modules = json.loads((out / "adapter_config.json").read_text())["target_modules"]
        assert len(modules) > 2 and modules == sorted(modules)  # PEFT writes its set in hash order
        if pad == "auto":
            assert tok.pad_token == "<pad>" and tok.pad_token_id != tok.eos_token_id
            assert len(tok) == len(AutoTokenizer.from_pretrained(tiny_base))
            assert all("lora_" in name for name in tensors)
            assert lineage["training"]["pad_token_added"] is False
        else:
            assert len(tok) == len(AutoTokenizer.from_pretrained(tiny_base)) + 1
            assert any("embed_tokens" in name for name in tensors)
            assert lineage["training"]["pad_token_added"] is True
    assert sizes["auto"] < sizes["[PAD]"]


def test_dpo_loss_falls_on_a_fittable_set(tiny_llama: str, tmp_path: Path) -> None:
    opts = dpo_options(max_steps=30, learning_rate=2e-3, rejected_eos_dropout=0.0)
    result = dpo.DPOTrainer(opts).train(
        TrainRequest(rows=pref_rows(4), model=tiny_llama, output_dir=str(tmp_path / "dpo"))
    )
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert len(losses) == 30
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert losses[-1] < 0.5 * losses[0]
    margins = [e["rewards/margins"] for e in result.log_history if "rewards/margins" in e]
    assert margins[-1] > 0
    card = json.loads((tmp_path / "dpo" / "selflearn-lineage.json").read_text())
    assert card["method"] == "dpo" and card["training"]["beta"] == 0.3
    generate(tmp_path / "dpo")


def test_dpo_truncates_prompts_and_drops_rejected_eos(tiny_llama: str) -> None:
    from trl import DPOConfig

    from selflearn.builtin.trainers.common import (
        load_model,
        prepare_tokenizer,
        resolve_precision,
        to_dataset,
    )
    from selflearn.builtin.trainers.dpo import _trainer_class
    from selflearn.builtin.trainers.runner import checkpointing_args

    opts = dpo_options()
    tok, _ = prepare_tokenizer(tiny_llama, opts)
    model = load_model(tiny_llama, tok, opts, resolve_precision("fp32"))
    args = DPOConfig(output_dir="/tmp/unused-dpo", report_to="none", bf16=False, max_length=64,
                     **checkpointing_args(False))  # TRL's default (on) under the old name warns
    trainer = _trainer_class()(
        model=model,
        ref_model=load_model(tiny_llama, tok, opts, resolve_precision("fp32")),
        args=args,
        train_dataset=to_dataset(pref_rows(4)),
        processing_class=tok,
        max_prompt_length=5,
        eos_dropout=1.0,
        seed=0,
    )
    ds = trainer.train_dataset
    full = tok.apply_chat_template(
        pref_rows(1)[0]["prompt"], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert len(full) > 5
    assert all(len(p) == 5 for p in ds["prompt_ids"])
    assert ds["prompt_ids"][0] == list(full[-5:])  # the end of the prompt is kept
    assert all(tok.eos_token_id not in r for r in ds["rejected_ids"])
    assert all(tok.eos_token_id in c for c in ds["chosen_ids"])


def test_lora_sft_merged_and_lora_dpo_adapter_both_load_and_generate(
    tiny_llama: str, tmp_path: Path
) -> None:
    lora = {"use_lora": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    sft_out = tmp_path / "sft"
    sft.SFTTrainer(sft_options(max_steps=3, **lora)).train(
        TrainRequest(rows=sft_rows(4), model=tiny_llama, output_dir=str(sft_out))
    )
    # merged weights at the top, the adapter beside them
    assert (sft_out / "model.safetensors").exists() and (sft_out / "adapter" / "adapter_config.json").exists()
    before, after = _weights(tiny_llama), _weights(sft_out)
    assert set(before) == set(after)  # a plain checkpoint, no LoRA tensors
    assert any(not before[k].equal(after[k]) for k in before)
    generate(sft_out)

    # DPO with LoRA from the SFT model, adapter not merged: the reference is the
    # adapter-disabled model, and the folder holds only the adapter
    dpo_out = tmp_path / "dpo"
    result = dpo.DPOTrainer(dpo_options(max_steps=3, merge_adapters=False, **lora)).train(
        TrainRequest(rows=pref_rows(4), model=str(sft_out), output_dir=str(dpo_out))
    )
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert (dpo_out / "adapter_config.json").exists() and not (dpo_out / "config.json").exists()
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(dpo_out))
    tok = AutoTokenizer.from_pretrained(str(dpo_out))
    ids = tok("Where is", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    # an adapter-only folder is a valid starting model for the next trainer (merged on load)
    again = sft.SFTTrainer(sft_options(max_steps=1)).train(
        TrainRequest(rows=sft_rows(4), model=str(dpo_out), output_dir=str(tmp_path / "next"))
    )
    generate(again.model_path)


def test_empty_and_malformed_rows_are_clear_errors(tiny_llama: str, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no rows"):
        dpo.DPOTrainer(dpo_options()).train(
            TrainRequest(rows=[], model=tiny_llama, output_dir=str(tmp_path / "x"))
        )
    with pytest.raises(StageError, match=r"missing \['rejected'\]"):
        dpo.DPOTrainer(dpo_options()).train(
            TrainRequest(
                rows=[{"prompt": "q", "chosen": "a"}], model=tiny_llama, output_dir=str(tmp_path / "x")
            )
        )
    mixed = sft_rows(1) + [{"prompt": "q", "completion": "a"}]
    with pytest.raises(StageError, match="mixes text and chat messages"):
        sft.SFTTrainer(sft_options()).train(
            TrainRequest(rows=mixed, model=tiny_llama, output_dir=str(tmp_path / "x"))
        )
    assert not (tmp_path / "x").exists()


def _qlora_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not _qlora_available(), reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_qlora_sft_then_dpo_on_gpu(tiny_llama: str, tmp_path: Path) -> None:
    qlora = {"use_lora": True, "load_in_4bit": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    sft_out = tmp_path / "sft"
    sft.SFTTrainer(sft_options(max_steps=3, **qlora)).train(
        TrainRequest(rows=sft_rows(4), model=tiny_llama, output_dir=str(sft_out))
    )
    card = json.loads((sft_out / "selflearn-lineage.json").read_text())
    assert card["training"]["load_in_4bit"] is True and card["training"]["precision"] in ("bf16", "fp16")
    assert (sft_out / "adapter" / "adapter_config.json").exists()
    assert set(_weights(sft_out)) == set(_weights(tiny_llama))  # merged into a plain checkpoint
    generate(sft_out)
    result = dpo.DPOTrainer(dpo_options(max_steps=3, **qlora)).train(
        TrainRequest(rows=pref_rows(4), model=str(sft_out), output_dir=str(tmp_path / "dpo"))
    )
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[0] == pytest.approx(0.6931, abs=2e-2)
    generate(tmp_path / "dpo")


def test_model_card_front_matter_loads_with_huggingface_hub(tiny_llama: str, tmp_path: Path) -> None:
    """The card names its base model (a hub-cache folder's repo id), the pushed dataset, the
    base card's license, the pipeline tag and tags, as huggingface_hub parses them."""
    import shutil

    from huggingface_hub import ModelCard

    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M" / "snapshots" / "abc123"
    shutil.copytree(tiny_llama, snapshot)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    out = tmp_path / "sft"
    lineage = {"hub_dataset": "me/selflearn-rows", "thresholds": {"tau_l": 0.5}}
    sft.SFTTrainer(sft_options(max_steps=1)).train(
        TrainRequest(rows=sft_rows(4), model=str(snapshot), output_dir=str(out), lineage=lineage)
    )
    data = ModelCard.load(str(out / "README.md")).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert data.datasets == ["me/selflearn-rows"] and data.license == "apache-2.0"
    assert data.pipeline_tag == "text-generation" and data.library_name == "transformers"
    assert {"selflearn", "trl", "sft"} <= set(data.tags)
    # the license option wins; a local base with no hub id names none, and DPO from that folder
    # links the run's original base from the upstream lineage
    from selflearn.builtin.trainers import lineage as lin

    record = json.loads((out / "selflearn-lineage.json").read_text())
    record["training"]["license"] = "mit"
    assert "license: mit" in lin.model_card(record)
    local = {"base_model": str(out), "resolved_base": str(out), "lineage": {"base_model": "org/base"}}
    assert lin.card_base_model(local) == "org/base"
    assert lin.card_base_model({"base_model": tiny_llama, "resolved_base": tiny_llama}) is None


def test_checkpointing_on_under_the_installed_transformers_names(
    tiny_llama: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gradient_checkpointing: true`` turns activation checkpointing on, passed under the name
    the installed TrainingArguments declares: transformers 5.25 renamed it and warns on the old
    name (a FutureWarning in every user's training log, an error in v6)."""
    import warnings

    import transformers

    calls: list[str] = []
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        original = getattr(transformers.PreTrainedModel, name, None)
        if original is not None:
            def spy(self: object, *a: object, _o: object = original, _n: str = name, **k: object) -> object:
                calls.append(_n)
                return _o(self, *a, **k)  # type: ignore[operator]

            monkeypatch.setattr(transformers.PreTrainedModel, name, spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sft.SFTTrainer(sft_options(max_steps=1, gradient_checkpointing=True)).train(
            TrainRequest(rows=sft_rows(4), model=tiny_llama, output_dir=str(tmp_path / "sft"))
        )
    renamed = [str(w.message) for w in caught if "training_args" in w.filename and "checkpointing" in str(w.message)]
    assert renamed == []
    assert calls, "activation checkpointing was never turned on"
