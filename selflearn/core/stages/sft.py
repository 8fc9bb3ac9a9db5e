"""Stage ``sft`` (``flow: paper`` only): the SFT rows, before any preference data.

The paper and the research code (method.md 6 and 7.1) train SFT first: reading-comprehension
rows (the question with its passage, labelled by a greedy answer that sees the passage) and
self-labelled rows (the base model's few-shot answers without the passage), then generate y*,
Y_c and Y_r with the SFT model G_SFT and run DPO from G_SFT. This stage builds the rows:

1. the questions are split as the ``datasets`` stage splits them (``datasets.sft_rc_fraction``,
   the same seeded shuffle); the RC label is the base model's greedy answer with the passage,
   made with ``generations.reference``'s decoding -- the very call the default flow makes for
   y*, so the two flows share the generation cache and train SFT on the same rows;
2. the other questions are self-labelled (``datasets.self_label*`` options).

Output: ``sft.jsonl`` (:class:`SFTExample`). The ``sft_model`` stage (:mod:`.sft_model`) then
trains G_SFT on them -- a stage of its own because every process of an accelerate launch /
torchrun takes part in a training, while the labels come from the main process alone.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError, StageError
from ..notes import sft_notes
from ..prompts import rc_messages
from ..records import Passage, Question
from . import _sftdata
from .base import Stage

log = logging.getLogger("selflearn")


class SFTStage(Stage):
    name = "sft"
    flow_sensitive = True
    requires = ("passages", "questions")
    slots = ("backend",)
    flows = ("paper",)

    def outputs(self) -> list[str]:
        return ["sft.jsonl"]

    # -- the settings this stage shares with others --------------------------------------
    def _shared(self, stage: str) -> Any:
        return self.run_ctx.stage_options[stage]

    def _reference_params(self) -> Any:
        from .generations import GenerationsStage

        return GenerationsStage(self.run_ctx, self._shared("generations")).params()["reference"]

    def fingerprint_config(self) -> dict[str, Any]:
        """Also the datasets stage's SFT settings and the reference decoding, which this stage
        reads from those sections."""
        config = super().fingerprint_config()
        d = self._shared("datasets")
        config["datasets"] = {
            k: getattr(d, k) for k in (
                "splits", "variant", "sft_rc_fraction", "self_label", "self_label_shots",
                "self_label_temperature", "self_label_repetition_penalty",
                "self_label_max_new_tokens", "self_label_retries",
            )
        }
        config["reference"] = self._reference_params().to_dict()
        return config

    def validate(self) -> None:
        super().validate()
        if not self.run_ctx.has("sft_trainer"):
            raise ConfigError(
                "flow: paper trains SFT first and generates the preference data with the SFT "
                "model, so it needs an sft_trainer (e.g. `sft_trainer: trl-sft`); without one, "
                "use flow: current",
                "sft_trainer",
            )

    def estimate(self) -> dict[str, Any]:
        from .base import count_questions

        d = self._shared("datasets")
        n = count_questions(self.store, d.splits)
        if n is None:
            return {}
        n_rc = 0 if d.variant == "no_passage" else int(n * d.sft_rc_fraction + 1e-9)
        n_self = n - n_rc if _sftdata.self_label_on(self.run_ctx, d) else 0
        return {
            "rc_generations": n_rc,
            "self_label_generations_min": n_self,
            "self_label_generations_max": n_self * d.self_label_retries,
        }

    # -- running -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        d = self._shared("datasets")
        questions = [q for q in self.store.read_records("questions.jsonl", Question) if q.split in d.splits]
        if not questions:
            raise StageError(
                f"questions.jsonl has no question of split(s) {d.splits}: nothing to build SFT "
                "rows from; run the questions stage first or change datasets.splits"
            )
        passages = {p.id: p for p in self.store.read_records("passages.jsonl", Passage)}
        rows, stats = self._rows(questions, passages)
        if not rows:
            raise StageError(
                f"no SFT row could be built from {len(questions)} questions ({stats}); check "
                "the backend's answers, datasets.sft_rc_fraction and datasets.self_label"
            )
        self.store.write_records("sft.jsonl", rows)
        notes = sft_notes(stats)
        for note in notes:
            log.warning("sft: %s", note)
        return {
            **({"notes": notes} if notes else {}),
            "questions": len(questions),
            "rows": len(rows),
            "by_origin": _sftdata.rows_by_origin(rows),
            **stats,
        }

    def _rows(self, questions: list[Question], passages: dict[str, Passage]) -> tuple[list[Any], dict[str, Any]]:
        """RC labels (greedy, passage in context, by the base model), then the SFT rows."""
        d = self._shared("datasets")
        rc_part, _ = _sftdata.rc_split(self.run_ctx, d, questions)
        rc_part = [q for q in rc_part if q.passage_id in passages]
        backend = self.run_ctx.component("backend")
        refs = {}
        if rc_part:
            prompts = [rc_messages(passages[q.passage_id].text, q.text) for q in rc_part]
            replies = backend.generate(prompts, self._reference_params(), n=1)
            refs = {q.id: r[0] for q, r in zip(rc_part, replies, strict=True) if r}
        ident = backend.identity()
        bases = {
            q.id: {
                "question_id": q.id, "passage_id": q.passage_id, "document_id": q.document_id,
                "flow": "paper", "generation": {"backend": ident},
            }
            for q in questions
        }
        return _sftdata.build_rows(self.run_ctx, d, questions, passages, refs, bases)
