"""Shared pieces of the TRL trainers: options, precision, model and tokenizer preparation.

Everything here runs in every process of a distributed launch (``accelerate launch``); the
distribution itself is TRL's and accelerate's, never ours. torch, transformers, peft and
datasets are imported inside the functions so that option validation stays light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import attrs

from ...core.errors import ConfigError, StageError
from ...core.models import load_causal_lm, load_tokenizer
from ...core.options import bounded
from ...core.prompts import ZEPHYR_TEMPLATE

log = logging.getLogger("selflearn.trainers")

#: parameter count above which the paper's "7B/13B" learning rates apply
LARGE_MODEL_PARAMS = 3_000_000_000


def _positive(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _fraction(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _steps(instance: Any, attribute: Any, value: float) -> None:
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(
            f"{attribute.name} must be a fraction of the training steps in (0, 1) or a whole "
            f"number of steps, got {value!r}"
        )


@attrs.frozen
class CommonOptions:
    """Options shared by ``trl-sft`` and ``trl-dpo`` (documented in docs/training.md)."""

    #: epochs, used when max_steps <= 0
    num_train_epochs: float = bounded(2.0, gt=0, validator=_positive)
    #: > 0: train this many optimizer steps (overrides num_train_epochs)
    max_steps: int = bounded(-1, ge=-1)
    #: null: by model size (SFT 2e-5 below 3B parameters, 1e-5 above; DPO 1e-6 / 5e-7), times lora_lr_multiplier with LoRA
    learning_rate: float | None = bounded(None, gt=0, validator=_positive)
    #: rows per device per step (the paper: 8 on each of 4 GPUs = 32)
    per_device_train_batch_size: int = bounded(8, ge=1, validator=_positive)
    #: rows per device per evaluation step
    per_device_eval_batch_size: int = bounded(8, ge=1, validator=_positive)
    #: effective batch = batch size x accumulation x processes
    gradient_accumulation_steps: int = bounded(1, ge=1, validator=_positive)
    #: a transformers scheduler name
    lr_scheduler_type: str = "cosine"
    #: warm-up as a share of the training steps
    warmup_ratio: float = bounded(0.03, ge=0, lt=1, validator=_fraction)
    #: AdamW weight decay
    weight_decay: float = bounded(0.0, ge=0)
    #: gradient clipping norm
    max_grad_norm: float = bounded(1.0, ge=0)
    #: a transformers optimizer name (e.g. paged_adamw_32bit for QLoRA)
    optim: str = "adamw_torch"
    #: prompt + answer tokens; longer rows are truncated at the end
    max_length: int = bounded(1024, ge=1, validator=_positive)
    #: share of rows held out for evaluation (0: none)
    eval_fraction: float = bounded(0.05, ge=0, lt=1, validator=_fraction)
    #: no evaluation split when it would hold fewer rows than this
    min_eval_rows: int = bounded(2, ge=1, validator=_positive)
    #: evaluation interval: < 1 a fraction of the training steps, >= 1 a number of steps
    eval_steps: float = bounded(0.2, ge=0, validator=_steps)
    #: checkpoint interval, as eval_steps; 0: no intermediate checkpoints (no resume after a kill)
    save_steps: float = bounded(0.2, ge=0, validator=_steps)
    #: checkpoints kept (the best one is always kept)
    save_total_limit: int = bounded(2, ge=1, validator=_positive)
    #: logging interval, as eval_steps (the first step is always logged)
    logging_steps: float = bounded(10, ge=0, validator=_steps)
    #: train a LoRA adapter on the frozen model instead of all weights
    use_lora: bool = False
    #: LoRA rank (the research code: 256)
    lora_r: int = bounded(64, ge=1, validator=_positive)
    #: LoRA scale numerator (alpha / r = 1, as in the research code)
    lora_alpha: int = bounded(64, ge=1, validator=_positive)
    #: dropout on the LoRA input
    lora_dropout: float = bounded(0.05, ge=0, lt=1, validator=_fraction)
    #: "all-linear" or a list of module names
    lora_target_modules: str | list[str] = "all-linear"
    #: with LoRA and learning_rate null: the by-size rate times this (the research code: x10)
    lora_lr_multiplier: float = bounded(10.0, gt=0, validator=_positive)
    #: QLoRA: the frozen base in 4-bit NF4 (needs use_lora, bitsandbytes and a CUDA GPU)
    load_in_4bit: bool = False
    #: with LoRA: also save the adapter merged into the base weights (a plain checkpoint)
    merge_adapters: bool = True
    #: recompute activations in the backward pass (less memory, slower)
    gradient_checkpointing: bool = True
    #: auto: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    #: auto: the model's own template, Zephyr-style when it has none; zephyr: always Zephyr-style; anything else: a Jinja chat template
    chat_template: str = "auto"
    #: auto: an existing special token (a pad-named token, unk, a reserved/unused token, else EOS), so the vocabulary is not resized; another value: that token, added if missing (new rows = mean embedding)
    pad_token: str = "auto"
    #: the model card's license (a hub license id such as apache-2.0); null: the base model's card's license when that card is on this machine
    license: str | None = None
    #: keep the checkpoints folder after a successful run (default: delete it)
    keep_checkpoints: bool = False
    #: where TRL reports metrics ("none", "tensorboard", "wandb", ...)
    report_to: str | list[str] = "none"

    def __attrs_post_init__(self) -> None:
        if self.load_in_4bit and not self.use_lora:
            raise ValueError(
                "load_in_4bit (QLoRA) trains LoRA adapters on a frozen 4-bit base: set use_lora: true"
            )


# -- precision and learning rate ---------------------------------------------------------------


@attrs.frozen
class Precision:
    name: str  # "bf16", "fp16" or "fp32"

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def fp16(self) -> bool:
        return self.name == "fp16"

    def torch_dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name, torch.float32)


def resolve_precision(choice: str) -> Precision:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (as asked, when possible)."""
    import torch

    cuda = torch.cuda.is_available()
    if choice == "auto":
        if not cuda:
            return Precision("fp32")
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if choice in ("bf16", "fp16") and not cuda:
        raise ConfigError(
            f"precision {choice!r} needs a CUDA GPU, but none is visible; use precision: auto or fp32",
            "precision",
        )
    return Precision(choice)


def learning_rate_for(kind: str, n_params: int, use_lora: bool, lora_multiplier: float) -> float:
    """The paper's learning rate for a model size (method.md 6.2 and 10).

    SFT: 2e-5 for ~1B, 1e-5 for 7B/13B; DPO: 1e-6 for ~1B, 5e-7 for 7B/13B. The boundary is
    3B parameters. With LoRA the research code multiplied the rate by 10.
    """
    large = n_params >= LARGE_MODEL_PARAMS
    table = {"sft": (2e-5, 1e-5), "dpo": (1e-6, 5e-7)}
    lr = table[kind][1 if large else 0]
    return lr * lora_multiplier if use_lora else lr


def count_parameters(path: str) -> int:
    """Parameters of a checkpoint, from its config alone (meta device: no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the config of the model {path!r}: {exc}. Give a hub id (with network "
            "access), a local folder, a .gguf file or a pkg: reference"
        ) from exc
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return int(model.num_parameters())


# -- tokenizer and model -----------------------------------------------------------------------


def prepare_tokenizer(path: str, options: CommonOptions) -> tuple[Any, bool]:
    """The tokenizer with a chat template and a real pad token; True if a token was added."""
    tok = load_tokenizer(path)
    choice = options.chat_template
    if choice == "zephyr" or (choice == "auto" and not getattr(tok, "chat_template", None)):
        if choice == "auto":
            log.info("%s has no chat template; using the Zephyr-style template", path)
        tok.chat_template = ZEPHYR_TEMPLATE
    elif choice != "auto":
        tok.chat_template = choice
    if tok.eos_token is None:
        raise ConfigError(
            f"the tokenizer of {path!r} has no EOS token; training needs one to end answers. "
            "Set tokenizer.eos_token in the checkpoint's tokenizer_config.json"
        )
    added = False
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        if options.pad_token == "auto":
            tok.pad_token = choose_pad_token(tok)
            log.info("%s: padding with the existing token %r (vocabulary unchanged)", path, tok.pad_token)
        else:
            # an explicit token (the research code added "[PAD]", method.md 6.2): new rows
            added = tok.add_special_tokens({"pad_token": options.pad_token}) > 0
            tok.pad_token = options.pad_token
    return tok, added


#: names of special tokens that a tokenizer reserves and ordinary text never produces
_RESERVED = re.compile(r"reserved|unused", re.IGNORECASE)


def choose_pad_token(tok: Any) -> str:
    """An existing token to pad with, so the vocabulary (and a LoRA adapter) stays the base's.

    In order: a special token named like a pad token, the unknown token, a reserved or unused
    special token, else EOS. Any of them is safe with TRL, whose collators mask padding by
    length (labels padded with -100), never by token id, so even EOS as the pad token still
    teaches the model to end its answers.
    """
    taken = {tok.eos_token, tok.bos_token}
    special = [str(t) for t in getattr(tok, "all_special_tokens", [])]
    added = [str(t.content) for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special]
    candidates = list(dict.fromkeys(special + added))
    for name in candidates:
        if "pad" in name.lower() and name not in taken:
            return name
    if tok.unk_token is not None and tok.unk_token not in taken:
        return str(tok.unk_token)
    for name in candidates:
        if _RESERVED.search(name) and name not in taken:
            return name
    return str(tok.eos_token)


def _adapter_only(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json")) and not os.path.isfile(
        os.path.join(path, "config.json")
    )


def quantization_config(options: CommonOptions, precision: Precision) -> Any:
    """A 4-bit NF4 config for QLoRA, or a clear error where bitsandbytes or CUDA is missing."""
    if not options.load_in_4bit:
        return None
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "4-bit QLoRA needs the bitsandbytes package, which is not installed. Install it "
            "(`pip install bitsandbytes`) or set load_in_4bit: false (plain LoRA)",
            "load_in_4bit",
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            "4-bit QLoRA needs a CUDA GPU and none is visible; set load_in_4bit: false",
            "load_in_4bit",
        )
    from transformers import BitsAndBytesConfig

    compute = precision.torch_dtype() if precision.name != "fp32" else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute
    )


def load_model(
    path: str,
    tokenizer: Any,
    options: CommonOptions,
    precision: Precision,
    *,
    quantized: bool = True,
) -> Any:
    """The model to train, its embeddings grown to the tokenizer (new rows = mean embedding).

    Full fine-tuning keeps fp32 weights (bf16/fp16 only as autocast), since a 1e-6 update
    vanishes in bf16 weights; with LoRA the frozen base is loaded in the compute precision.
    An adapter-only folder (a LoRA run saved without merging) is merged into its base first.
    """
    import torch

    dtype = precision.torch_dtype() if options.use_lora else torch.float32
    kwargs: dict[str, Any] = {}
    qconfig = quantization_config(options, precision) if quantized else None
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if _adapter_only(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
        model.requires_grad_(True)  # PEFT froze the base when it loaded the adapter
    else:
        model = load_causal_lm(path, dtype=dtype, **kwargs)
    grow_embeddings(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if options.gradient_checkpointing:
        model.config.use_cache = False
    return model


def grow_embeddings(model: Any, tokenizer: Any) -> int:
    """Resize the embeddings to the tokenizer; new rows get the mean of the old ones.

    The mean (not a random draw) keeps the new token neutral and makes the result identical
    in every process and every reload (a DPO reference built separately matches the policy).
    """
    import torch

    emb = model.get_input_embeddings()
    old = int(emb.weight.shape[0])
    if len(tokenizer) <= old:
        return 0
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weights = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    gather: Any = contextlib.nullcontext()
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(weights, modifier_rank=0)
    with gather, torch.no_grad():
        for w in weights:
            w[old:] = w[:old].mean(dim=0, keepdim=True)
    return len(tokenizer) - old


def lora_config(options: CommonOptions) -> Any:
    if not options.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=options.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


# -- rows --------------------------------------------------------------------------------------


def check_rows(rows: Sequence[dict[str, Any]], fields: tuple[str, ...], kind: str) -> None:
    """Rows must be dicts with ``fields``, each either text in every row or messages in every row."""
    if not rows:
        raise StageError(
            f"{kind} training got no rows. The dataset is empty: check that the previous stage "
            "kept any rows (its filters may have removed everything)"
        )
    shapes: dict[str, type] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise StageError(f"{kind} row {i}: expected a dict with {fields}, got {type(row).__name__}")
        missing = [f for f in fields if f not in row]
        if missing:
            raise StageError(
                f"{kind} row {i}: missing {missing}; expected the fields {list(fields)} "
                "(text, or chat messages such as [{'role': 'user', 'content': ...}])"
            )
        for f in fields:
            value = row[f]
            shape = str if isinstance(value, str) else list
            if shape is list and not (
                isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)
            ):
                raise StageError(
                    f"{kind} row {i}: field {f!r} must be text or a list of chat messages, got {value!r:.80}"
                )
            if shapes.setdefault(f, shape) is not shape:
                raise StageError(
                    f"{kind} row {i}: field {f!r} mixes text and chat messages across rows; "
                    "use one format for the whole dataset"
                )


def split_rows(
    rows: Sequence[dict[str, Any]], fraction: float, min_eval: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A seeded shuffle, then ``fraction`` of the rows held out (none if too few)."""
    rows = [dict(r) for r in rows]
    n_eval = int(round(len(rows) * fraction))
    if fraction <= 0 or n_eval < min_eval or len(rows) - n_eval < 1:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def to_dataset(rows: Sequence[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(list(rows))


# -- errors ------------------------------------------------------------------------------------


@contextlib.contextmanager
def memory_errors(model: str, options: CommonOptions, kind: str) -> Iterator[None]:
    """Turn an out-of-memory failure into a :class:`StageError` that says what to change."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError, MemoryError) as exc:
        text = str(exc).lower()
        if not isinstance(exc, (torch.OutOfMemoryError, MemoryError)) and not (
            "out of memory" in text or "can't allocate memory" in text
        ):
            raise
        where = "GPU" if torch.cuda.is_available() else "CPU"
        setup = "LoRA" if options.use_lora else "full fine-tuning"
        hints = [
            f"lower per_device_train_batch_size (now {options.per_device_train_batch_size}) and "
            "raise gradient_accumulation_steps to keep the effective batch",
            f"lower max_length (now {options.max_length})",
        ]
        if not options.use_lora:
            hints.insert(0, "set use_lora: true (LoRA trains a small adapter on a frozen model)")
        elif not options.load_in_4bit:
            hints.insert(0, "set load_in_4bit: true (QLoRA, on a CUDA GPU with bitsandbytes)")
        if not options.gradient_checkpointing:
            hints.append("set gradient_checkpointing: true")
        hints.append(
            "or spread the model over several GPUs with accelerate launch --config_file "
            "examples/accelerate/deepspeed_zero3.yaml (see docs/training.md)"
        )
        raise StageError(
            f"{kind} training of {model!r} ran out of {where} memory ({setup}, batch size "
            f"{options.per_device_train_batch_size}, max_length {options.max_length}): {exc}. "
            "To fit, " + "; ".join(hints)
        ) from exc
