"""``trl-sft``: supervised fine-tuning with TRL's ``SFTTrainer``, loss on the answer only.

Rows are ``{"prompt": ..., "completion": ...}``, either chat messages (the tokenizer's chat
template is applied by TRL; a Zephyr-style template is injected where a base model has none)
or plain text (TRL appends EOS). TRL computes the loss on the completion tokens only, which
replaces the research code's ``DataCollatorForCompletionOnlyLM`` on the ``<|assistant|>``
marker. With an evaluation split the checkpoint with the lowest evaluation loss is kept (the
paper's "early stopping"; the research scripts trained 2 epochs and kept the last).

Defaults are the paper's (method.md 6.2): lr 2e-5 (~1B) / 1e-5 (7B, 13B), 2 epochs, cosine,
warm-up 3%, max length 1024, batch 8 per device, 5% evaluation split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .common import CommonOptions
from .runner import TRLTrainer


@attrs.frozen
class Options(CommonOptions):
    #: keep the checkpoint with the lowest evaluation loss (needs an evaluation split)
    load_best_model_at_end: bool = True
    #: loss on the answer tokens only (False: on the whole sequence)
    completion_only_loss: bool = True


class SFTTrainer(TRLTrainer):
    name = "trl-sft"
    method = "sft"
    data_kind = "sft"
    fields = ("prompt", "completion")

    options: Options

    def _config(self, common: dict[str, Any], has_eval: bool) -> Any:
        from trl import SFTConfig

        best = has_eval and self.options.load_best_model_at_end
        if best:
            # load_best_model_at_end needs a checkpoint at every evaluation
            common.update(save_strategy="steps", save_steps=common["eval_steps"])
        return SFTConfig(
            **common,
            completion_only_loss=self.options.completion_only_loss,
            packing=False,
            load_best_model_at_end=best,
            metric_for_best_model="eval_loss" if best else None,
            greater_is_better=False if best else None,
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
        from trl import SFTTrainer as _TRLSFTTrainer

        return _TRLSFTTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )


def create(options: Options, context: Any) -> SFTTrainer:
    return SFTTrainer(options)
