"""``trl-dpo``: direct preference optimisation with TRL's ``DPOTrainer``.

Rows are ``{"prompt", "chosen", "rejected"}`` in TRL's conversational format (the prompt is
the question without the passage; chosen and rejected are one assistant message each), or
plain text. The reference model is the starting model: with full fine-tuning a second copy
loaded the same way as the policy; with LoRA none is loaded, and TRL computes the reference
log-probabilities with the adapter disabled.

Defaults are the paper's (method.md 10): beta 0.3, 300 steps, lr 1e-6 (~1B) / 5e-7 (7B, 13B),
cosine schedule with 10% warm-up, prompts cut to their last 128 tokens, 512 tokens in all,
batch 8 per device. TRL 1.x has no ``max_prompt_length``; :class:`_PromptTruncatingDPOTrainer`
restores it (keeping the end of the prompt, as the TRL version the paper used did).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import attrs

from ...core.hashing import seed_from
from ...core.options import bounded
from .common import CommonOptions, _fraction, _positive
from .runner import TRLTrainer


def _probability(instance: Any, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


@attrs.frozen
class Options(CommonOptions):
    #: DPO temperature: higher keeps the model closer to the reference
    beta: float = bounded(0.3, gt=0, validator=_positive)
    #: optimizer steps, whatever the dataset size (the paper: 300)
    max_steps: int = bounded(300, ge=-1)
    #: epochs, used when max_steps <= 0
    num_train_epochs: float = bounded(1.0, gt=0, validator=_positive)
    #: warm-up as a share of the training steps (the paper: 10%)
    warmup_ratio: float = bounded(0.1, ge=0, lt=1, validator=_fraction)
    #: prompt tokens kept (the end of the prompt); the rest of max_length is for the answer
    max_prompt_length: int = bounded(128, ge=1, validator=_positive)
    #: prompt + answer tokens
    max_length: int = bounded(512, ge=1, validator=_positive)
    #: TRL loss type: "sigmoid" is the DPO loss of the paper; "ipo", "hinge", ... also work
    loss_type: str = "sigmoid"
    #: probability of dropping the EOS that ends a rejected answer (the research code used 0.5,
    #: so that ending an answer is not itself learnt as dispreferred); 0 keeps every EOS
    rejected_eos_dropout: float = bounded(0.5, ge=0, le=1, validator=_probability)
    #: compute the reference log-probabilities once before training (saves the reference
    #: model's memory with full fine-tuning)
    precompute_ref_log_probs: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                f"({self.max_length}), or no answer token is left to train on"
            )


@functools.lru_cache(maxsize=1)
def _trainer_class() -> type:
    """A DPOTrainer that cuts prompts to ``max_prompt_length`` and drops some rejected EOS."""
    from trl import DPOTrainer

    class _PromptTruncatingDPOTrainer(DPOTrainer):
        def __init__(
            self, *args: Any, max_prompt_length: int, eos_dropout: float, seed: int, **kwargs: Any
        ) -> None:
            # set before DPOTrainer.__init__, which prepares the datasets
            self.selflearn_max_prompt_length = max_prompt_length
            self.selflearn_eos_dropout = eos_dropout
            self.selflearn_seed = seed
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            keep = self.selflearn_max_prompt_length
            drop = self.selflearn_eos_dropout
            seed = self.selflearn_seed
            eos = self._tokenizer.eos_token_id

            def cut(example: dict[str, Any], index: int) -> dict[str, Any]:
                out = {"prompt_ids": example["prompt_ids"][-keep:]}
                rejected = list(example["rejected_ids"])
                if drop > 0 and eos in rejected and random.Random(seed_from(seed, index)).random() < drop:
                    last = len(rejected) - 1 - rejected[::-1].index(eos)
                    if last > 0:  # never leave an empty answer
                        out["rejected_ids"] = rejected[:last]
                return out

            return dataset.map(cut, with_indices=True)

    return _PromptTruncatingDPOTrainer


class DPOTrainer(TRLTrainer):
    name = "trl-dpo"
    method = "dpo"
    data_kind = "preference"
    fields = ("prompt", "chosen", "rejected")

    options: Options

    def _config(self, common: dict[str, Any], has_eval: bool) -> Any:
        from trl import DPOConfig

        return DPOConfig(
            **common,
            beta=self.options.beta,
            loss_type=[self.options.loss_type],
            precompute_ref_log_probs=self.options.precompute_ref_log_probs,
        )

    def _trainer(
        self,
        *,
        model: Any,
        args: Any,
        train_dataset: Any,
        eval_dataset: Any,
        tokenizer: Any,
        peft_config: Any,
        load_reference: Callable[[], Any],
        seed: int,
    ) -> Any:
        # With LoRA the reference is the adapter-disabled model (TRL, when ref_model is None).
        # With full fine-tuning we load the reference ourselves, prepared exactly like the
        # policy (same pad token and mean-initialised rows), instead of letting TRL reload the
        # checkpoint, which would lack a pad token added here.
        full = peft_config is None and not self.options.precompute_ref_log_probs
        return _trainer_class()(
            model=model,
            ref_model=load_reference() if full else None,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            max_prompt_length=self.options.max_prompt_length,
            eos_dropout=self.options.rejected_eos_dropout,
            seed=seed,
        )


def create(options: Options, context: Any) -> DPOTrainer:
    return DPOTrainer(options)
