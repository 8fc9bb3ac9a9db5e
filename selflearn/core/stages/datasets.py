"""Stage ``datasets``: the knowledge filters, the DPO pairs and the SFT rows (method.md 6.1, 7.3-9).

Reads ``questions``, ``passages``, ``generations`` and ``scores``; writes

- ``dpo_pairs.jsonl`` (:class:`PreferencePair`): prompt = the question without the passage,
  chosen = y*, rejected = the Y_r sample with the highest per-sample score (see ``_filters``
  for the pair modes, the no-passage variant and truncated samples);
- ``sft.jsonl`` (:class:`SFTExample`): reading-comprehension rows (passage + question -> y*,
  prompt = :func:`selflearn.core.prompts.rc_messages`' user turn) for a ``sft_rc_fraction`` of
  the questions, and self-labelled rows (few-shot, no passage, quality-checked; ``_selflabel``)
  for the rest when self-labelling is on;
- ``dpo_pairs.parquet``, ``sft.parquet`` and ``datasets.Dataset`` folders ``datasets/dpo`` and
  ``datasets/sft`` (optionally pushed to the hub), ``datasets_summary.json`` and
  ``scores_hist.png``.

Every row's provenance names its passage and document, S_L, S_K, the per-sample scores, the
thresholds and the scorer. A selection that keeps nothing is not an error here: the files are
written empty, the summary says which filter removed what, and the train stage reports it.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from typing import Any, Literal

import attrs

from ..errors import ConfigError
from ..hashing import content_hash
from ..notes import filter_notes
from ..options import bounded
from ..records import Generations, Passage, PreferencePair, Question, Scores, SFTExample
from . import _export, _sftdata
from ._filters import (
    Candidate,
    FilterConfig,
    decide,
    multiple_pairs,
    no_passage_pairs,
    single_pair,
)
from .base import Stage
from .scores import describe_scores

log = logging.getLogger("selflearn")

OUTPUTS = (
    "dpo_pairs.jsonl",
    "sft.jsonl",
    "datasets_summary.json",
    "scores_hist.png",
    "dpo_pairs.parquet",
    "sft.parquet",
    "datasets/dpo/dataset_info.json",
    "datasets/sft/dataset_info.json",
)


@attrs.frozen
class DatasetsOptions:
    #: keep questions with S_L <= tau_l (consistency) and S_K > tau_k (knowledge, "unknown")
    tau_l: float = bounded(0.5, ge=0, le=1)
    tau_k: float = bounded(0.5, ge=0, le=1)
    #: each filter can be switched off without switching off the other
    consistency_filter: bool = True
    knowledge_filter: bool = True
    #: one pair per question, or up to max_pairs_per_question (method.md 9.2)
    pair_mode: Literal["single", "multiple"] = "single"
    max_pairs_per_question: int = bounded(4, ge=1)
    #: with_passage: chosen = y*; no_passage: chosen/rejected among Y_r only (method.md 9.4;
    #: needs scores.no_passage: true, and the consistency filter off)
    variant: Literal["with_passage", "no_passage"] = "with_passage"
    #: samples that hit max_new_tokens: never paired, cut after their last sentence, or kept
    truncated_samples: Literal["drop", "trim", "keep"] = "drop"
    #: drop questions whose y* hit max_new_tokens (a truncated chosen answer teaches truncation)
    drop_truncated_reference: bool = True
    #: keep a seeded random sample of at most this many of the questions that passed the
    #: filters (None: all). A size-matched control: an unfiltered run with max_questions set
    #: to a filtered run's count trains as many steps per pair, so the two differ only in
    #: which questions were picked
    max_questions: int | None = bounded(None, ge=1)
    #: question splits that enter the datasets
    splits: list[str] = attrs.field(factory=lambda: ["train"])
    #: SFT rows: share of questions given as reading-comprehension rows (the paper: 1/3)
    sft_rc_fraction: float = bounded(1 / 3, ge=0, le=1)
    #: self-labelled rows for the other questions: "auto" = on when an sft_trainer is configured
    self_label: Literal["auto", "on", "off"] = "auto"
    self_label_shots: int = bounded(10, ge=0)
    self_label_temperature: float = bounded(0.3, ge=0)
    self_label_repetition_penalty: float = bounded(1.1, gt=0)
    self_label_max_new_tokens: int = bounded(384, ge=1, le=1_000_000)
    self_label_retries: int = bounded(5, ge=1, le=100)
    histogram_bins: int = bounded(20, ge=1, le=10_000)
    #: push the DPO and SFT datasets to the Hugging Face hub (token: the HF_TOKEN secret)
    push_to_hub: bool = False
    hub_repo: str | None = None
    hub_private: bool = True
    #: the hub's URL (None: huggingface.co, or the HF_ENDPOINT environment variable)
    hub_endpoint: str | None = None


def _pair(
    q: Question, chosen: Candidate, rejected: Candidate, base: dict[str, Any]
) -> PreferencePair:
    prov = {
        **base,
        "chosen_source": chosen.source,
        "chosen_score": chosen.score,
        "rejected_source": rejected.source,
        "rejected_score": rejected.score,
        "rejected_finish_reason": rejected.finish_reason,
        "rejected_trimmed": rejected.trimmed,
    }
    return PreferencePair(
        id=content_hash([q.id, chosen.text, rejected.text], 16),
        question_id=q.id,
        prompt=q.text,
        chosen=chosen.text,
        rejected=rejected.text,
        provenance=prov,
    )


class DatasetsStage(Stage):
    name = "datasets"
    flow_sensitive = True
    requires = ("passages", "questions", "generations", "scores")
    slots = ("backend", "sft_trainer")
    options_class = DatasetsOptions

    def outputs(self) -> list[str]:
        """In ``flow: paper`` the sft stage owns ``sft.jsonl``; this stage exports it."""
        return [f for f in OUTPUTS if not (self.flow == "paper" and f == "sft.jsonl")]

    def dependencies(self) -> tuple[str, ...]:
        return (*self.requires, "sft") if self.flow == "paper" else self.requires

    @property
    def cfg(self) -> FilterConfig:
        o: DatasetsOptions = self.options
        return FilterConfig(o.tau_l, o.tau_k, o.consistency_filter, o.knowledge_filter)

    def _self_label_on(self) -> bool:
        return _sftdata.self_label_on(self.run_ctx, self.options)

    def validate(self) -> None:
        o: DatasetsOptions = self.options
        if o.variant == "no_passage" and o.consistency_filter:
            raise ConfigError(
                "the no_passage variant has no reference y*, so there is no S_L to filter on; "
                "set consistency_filter: false",
                "datasets.consistency_filter",
            )
        if o.max_questions is not None and o.max_questions < 1:
            raise ConfigError(f"expected a positive number of questions or null, got {o.max_questions}",
                              "datasets.max_questions")
        if not 0.0 <= o.sft_rc_fraction <= 1.0:
            raise ConfigError(f"expected a number in [0, 1], got {o.sft_rc_fraction}", "datasets.sft_rc_fraction")
        if o.max_pairs_per_question < 1 or o.self_label_retries < 1 or o.self_label_shots < 0:
            raise ConfigError(
                "max_pairs_per_question and self_label_retries must be at least 1, "
                "self_label_shots at least 0",
                "datasets",
            )
        if o.push_to_hub and not o.hub_repo:
            raise ConfigError("push_to_hub needs hub_repo: OWNER/NAME", "datasets.hub_repo")
        super().validate()

    def estimate(self) -> dict[str, Any]:
        if self.flow == "paper" or not self._self_label_on() or not self.store.exists("questions.jsonl"):
            return {}
        o: DatasetsOptions = self.options
        n = sum(1 for q in self.store.read_records("questions.jsonl", Question) if q.split in o.splits)
        if o.variant == "with_passage":
            n -= int(n * o.sft_rc_fraction + 1e-9)
        return {"self_label_generations_min": n, "self_label_generations_max": n * o.self_label_retries}

    # -- DPO pairs -----------------------------------------------------------------------------
    def _pairs_for(
        self, q: Question, g: Generations, s: Scores, base: dict[str, Any], removed: Counter[str]
    ) -> list[PreferencePair]:
        o: DatasetsOptions = self.options
        cfg = self.cfg
        if o.variant == "no_passage":
            mutual = s.provenance.get("no_passage") or {}
            verdict = decide(None, mutual.get("score"), attrs.evolve(cfg, consistency=False))
            if verdict != "kept":
                removed[verdict] += 1
                return []
            base = {**base, "no_passage": mutual}
            limit = o.max_pairs_per_question if o.pair_mode == "multiple" else 1
            pairs = no_passage_pairs(g.without_passage, mutual.get("sample_scores", []), limit, o.truncated_samples)
        else:
            if not g.reference.text.strip():
                removed["reference_empty"] += 1
                return []
            if g.reference.finish_reason == "length" and o.drop_truncated_reference:
                removed["reference_truncated"] += 1
                return []
            verdict = decide(s.s_l, s.s_k, cfg)
            if verdict != "kept":
                removed[verdict] += 1
                return []
            if o.pair_mode == "multiple":
                pairs = multiple_pairs(
                    g.reference, g.with_passage, s.consistency_samples, g.without_passage,
                    s.knowledge_samples, cfg, o.max_pairs_per_question, o.truncated_samples,
                )
            else:
                one = single_pair(g.reference, g.without_passage, s.knowledge_samples, o.truncated_samples)
                pairs = [one] if one else []
        if not pairs:
            removed["no_rejected_candidate"] += 1
        return [_pair(q, c, r, base) for c, r in pairs]

    # -- SFT rows ------------------------------------------------------------------------------
    def _sft(
        self, questions: list[Question], passages: dict[str, Passage], gens: dict[str, Generations],
        bases: dict[str, dict[str, Any]],
    ) -> tuple[list[SFTExample], dict[str, Any]]:
        refs = {qid: g.reference for qid, g in gens.items()}
        return _sftdata.build_rows(self.run_ctx, self.options, questions, passages, refs, bases)

    def _sample(self, pairs: list[PreferencePair], most: int, removed: Counter[str]) -> list[PreferencePair]:
        """The pairs of a seeded random sample of ``most`` of their questions."""
        ids = sorted({p.question_id for p in pairs})
        if len(ids) <= most:
            return pairs
        keep = set(random.Random(self.run_ctx.seed).sample(ids, most))
        removed["sampled_out"] += len(ids) - len(keep)
        return [p for p in pairs if p.question_id in keep]

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        o: DatasetsOptions = self.options
        cfg = self.cfg
        every = self.store.read_records("questions.jsonl", Question)
        questions = [q for q in every if q.split in o.splits]
        passages = {p.id: p for p in self.store.read_records("passages.jsonl", Passage)}
        gens = {g.question_id: g for g in self.store.read_records("generations.jsonl", Generations)}
        check_splits(o.splits, every, gens)
        scores = {s.question_id: s for s in self.store.read_records("scores.jsonl", Scores)}
        if o.variant == "no_passage" and any("no_passage" not in s.provenance for s in scores.values()):
            raise ConfigError(
                "the no_passage variant needs each Y_r sample scored against the others; set "
                "scores.no_passage: true (the scores stage then runs again)",
                "datasets.variant",
            )
        scorers = {json.dumps(s.provenance.get("scorer"), sort_keys=True) for s in scores.values()}
        scorer_ident: Any = [json.loads(x) for x in sorted(scorers)]
        scorer_ident = scorer_ident[0] if len(scorer_ident) == 1 else scorer_ident
        thresholds = {
            "tau_l": o.tau_l, "tau_k": o.tau_k,
            "consistency_filter": o.consistency_filter, "knowledge_filter": o.knowledge_filter,
        }
        removed: Counter[str] = Counter()
        pairs: list[PreferencePair] = []
        bases: dict[str, dict[str, Any]] = {}
        for q in questions:
            s = scores.get(q.id)
            g = gens.get(q.id)
            bases[q.id] = self._base(q, g, s, thresholds)
            if g is None:
                removed["no_generations"] += 1
            elif s is None:
                removed["no_scores"] += 1
            else:
                pairs += self._pairs_for(q, g, s, bases[q.id], removed)
        if o.max_questions is not None:
            pairs = self._sample(pairs, o.max_questions, removed)
        if self.flow == "paper":  # built by the sft stage (G_SFT trained on them) before generations
            sft_rows = self.store.read_records("sft.jsonl", SFTExample)
            sft_stats: dict[str, Any] = {"built_by": "sft stage (flow: paper)"}
        else:
            sft_rows, sft_stats = self._sft(questions, passages, gens, bases)
        tables = self._write(pairs, sft_rows, questions, scores, cfg, scorer_ident)
        scored = [scores[q.id] for q in questions if q.id in scores]
        summary = self._summary(questions, gens, scored, pairs, removed, sft_rows, sft_stats,
                                thresholds, scorer_ident)
        if o.consistency_filter and scored and all(s.s_l is None for s in scored):
            log.warning(
                "datasets: no question has an S_L, so the consistency filter removes them all; "
                "set scores.consistency: true, or datasets.consistency_filter: false"
            )
        if not pairs:
            log.warning("datasets: the filters kept no question (%s)", summary["removed"])
        summary["notes"] = filter_notes(summary)
        for note in summary["notes"]:
            log.warning("datasets: %s", note)
        if o.push_to_hub:
            self._push(tables, summary)
        self.store.write_json("datasets_summary.json", summary)
        return summary

    def _base(self, q: Question, g: Generations | None, s: Scores | None,
              thresholds: dict[str, Any]) -> dict[str, Any]:
        """What every row built from question ``q`` records of where it came from: its scores,
        the thresholds and settings that chose it, the scorer and the backend that answered."""
        o: DatasetsOptions = self.options
        return {
            "question_id": q.id,
            "passage_id": q.passage_id,
            "document_id": q.document_id,
            "s_l": s.s_l if s else None,
            "s_k": s.s_k if s else None,
            "consistency_samples": s.consistency_samples if s else [],
            "knowledge_samples": s.knowledge_samples if s else [],
            "thresholds": thresholds,
            "scorer": s.provenance.get("scorer") if s else None,
            "generation": {k: g.provenance.get(k) for k in ("backend", "k")} if g else None,
            "variant": o.variant,
            "pair_mode": o.pair_mode,
            "truncated_samples": o.truncated_samples,
        }

    def _summary(
        self,
        questions: list[Question],
        gens: dict[str, Generations],
        scored: list[Scores],
        pairs: list[PreferencePair],
        removed: Counter[str],
        sft_rows: list[SFTExample],
        sft_stats: dict[str, Any],
        thresholds: dict[str, Any],
        scorer_ident: Any,
    ) -> dict[str, Any]:
        """The stage's summary: counts after every filter, what each filter alone would remove,
        and the score distributions, so a reader can tell why the pair count is what it is."""
        o: DatasetsOptions = self.options
        cfg = self.cfg
        kept = len({p.question_id for p in pairs})
        truncated = Counter(
            c.finish_reason for q in questions if q.id in gens for c in gens[q.id].without_passage
        )
        summary: dict[str, Any] = {
            "questions": len(questions),
            "with_generations": sum(1 for q in questions if q.id in gens),
            "scored": len(scored),
            "removed": {k: removed[k] for k in sorted(removed)},
            "kept_questions": kept,
            "dpo_pairs": len(pairs),
            "would_fail": {  # per filter, each applied alone to the scored questions
                "consistency": sum(1 for s in scored if decide(s.s_l, None, attrs.evolve(cfg, consistency=True, knowledge=False)) != "kept"),
                "knowledge": sum(1 for s in scored if decide(None, s.s_k, attrs.evolve(cfg, consistency=False, knowledge=True)) != "kept"),
            },
            "thresholds": thresholds,
            "filters": {"consistency": o.consistency_filter, "knowledge": o.knowledge_filter},
            "pair_mode": o.pair_mode,
            "variant": o.variant,
            "truncated_samples": {
                "policy": o.truncated_samples,
                "without_passage_finish_reasons": dict(truncated),
                "rejected_trimmed": sum(1 for p in pairs if p.provenance.get("rejected_trimmed")),
                "rejected_truncated": sum(1 for p in pairs if p.provenance.get("rejected_finish_reason") == "length"),
            },
            "scorer": scorer_ident,
            "s_l": describe_scores([s.s_l for s in scored]),
            "s_k": describe_scores([s.s_k for s in scored]),
            "sft": {"rows": len(sft_rows), "by_origin": _sftdata.rows_by_origin(sft_rows), **sft_stats},
        }
        if o.push_to_hub:  # the trained models' cards link it (train stage)
            summary["hub_dataset"] = o.hub_repo
        return summary

    def _write(
        self, pairs: list[PreferencePair], sft_rows: list[SFTExample], questions: list[Question],
        scores: dict[str, Scores], cfg: FilterConfig, scorer: Any,
    ) -> dict[str, Any]:
        o: DatasetsOptions = self.options
        self.store.write_records("dpo_pairs.jsonl", pairs)
        if self.flow != "paper":
            self.store.write_records("sft.jsonl", sft_rows)
        tables = {"dpo": _export.table(pairs, "dpo"), "sft": _export.table(sft_rows, "sft")}
        _export.write_parquet(self.store, "dpo_pairs.parquet", tables["dpo"])
        _export.write_parquet(self.store, "sft.parquet", tables["sft"])
        for kind, tbl in tables.items():
            _export.save_dataset(self.store, f"datasets/{kind}", tbl)
        scored = [scores[q.id] for q in questions if q.id in scores]
        name = scorer.get("scorer", "scorer") if isinstance(scorer, dict) else "several scorers"
        png = _export.histogram_png(
            [s.s_l for s in scored], [s.s_k for s in scored], cfg, str(name), o.histogram_bins
        )
        self.store.write_bytes("scores_hist.png", png)
        return tables

    def _push(self, tables: dict[str, Any], summary: dict[str, Any]) -> None:
        """Both tables and a dataset card (provenance, thresholds, scorer, counts, the
        configuration without secrets) to ``hub_repo``."""
        o: DatasetsOptions = self.options
        assert o.hub_repo is not None
        describe = self.run_ctx.describe
        config = describe() if callable(describe) else dict(self.run_ctx.config)
        counts = {kind: int(tbl.num_rows) for kind, tbl in tables.items()}
        card = _export.dataset_card(o.hub_repo, summary, config, counts)
        self.store.write_text("datasets/README.md", card)
        _export.push_to_hub(tables, o.hub_repo, o.hub_private, self.run_ctx.secret("HF_TOKEN"), card,
                            endpoint=o.hub_endpoint)


def check_splits(splits: list[str], every: list[Question], gens: dict[str, Any]) -> None:
    """Stop with a message that names the split when a split of ``datasets.splits`` has no
    question in questions.jsonl or none of its questions has generations (otherwise the stage
    would end with empty datasets and only "the filters kept no question")."""
    held = sorted({q.split for q in every})
    answered = sorted({q.split for q in every if q.id in gens})
    for split in splits:
        if split not in held:
            raise ConfigError(
                f"questions.jsonl has no question of split {split!r} (it holds split(s) "
                f"{', '.join(map(repr, held)) or 'none'}); the test questions "
                "(test_questions.jsonl) are held out for evaluation and never enter the datasets. "
                f"Set datasets.splits to split(s) that questions.jsonl holds, e.g. [{held[0] if held else 'train'}]",
                "datasets.splits",
            )
        if split not in answered:
            raise ConfigError(
                f"split {split!r} has questions but none has generations (the generations stage "
                f"answered split(s) {', '.join(map(repr, answered)) or 'none'}); add {split!r} to "
                f"generations.splits so it is answered and scored, or remove it from datasets.splits",
                "datasets.splits",
            )
