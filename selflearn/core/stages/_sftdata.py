"""The SFT rows (method.md 6.1): reading-comprehension rows for a share of the questions and
self-labelled rows (few-shot, no passage, quality-checked; ``_selflabel``) for the rest.

Shared by the ``datasets`` stage (the default flow: the RC label is y* of the generations stage)
and the ``sft`` stage of ``flow: paper`` (the RC label is the same greedy call with the passage,
made before any generation, so that SFT can come first). Both split the questions the same way
(a shuffle seeded by the run's seed), so the two flows train SFT on the same rows.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from ..context import RunContext
from ..errors import ConfigError
from ..execution import Shard, Task, run_shards
from ..hashing import content_hash
from ..prompts import rc_messages
from ..protocols import GenerationParams
from ..records import Completion, Passage, Question, SFTExample
from . import _selflabel


def self_label_on(run_ctx: RunContext, options: Any) -> bool:
    """Self-labelling: "on", or "auto" with an ``sft_trainer`` configured."""
    return bool(options.self_label == "on" or (options.self_label == "auto" and run_ctx.has("sft_trainer")))


def rows_by_origin(rows: list[SFTExample]) -> dict[str, int]:
    """How many SFT rows of each origin (``rc``, ``self``), in order of first appearance."""
    return dict(Counter(r.origin for r in rows))


def rc_split(run_ctx: RunContext, options: Any, questions: list[Question]) -> tuple[list[Question], list[Question]]:
    """(reading-comprehension questions, questions to self-label): a seeded shuffle, the first
    ``sft_rc_fraction`` of it for RC (none in the no_passage variant)."""
    order = sorted(questions, key=lambda q: q.id)
    random.Random(run_ctx.seed).shuffle(order)
    n_rc = 0 if options.variant == "no_passage" else int(len(order) * options.sft_rc_fraction + 1e-9)
    return order[:n_rc], order[n_rc:]


def build_rows(
    run_ctx: RunContext,
    options: Any,
    questions: list[Question],
    passages: dict[str, Passage],
    refs: dict[str, Completion],
    bases: dict[str, dict[str, Any]],
) -> tuple[list[SFTExample], dict[str, Any]]:
    """The SFT rows and their statistics. ``refs`` holds each question's passage-grounded
    greedy answer (y*), the label of its RC row (a truncated one only with
    ``drop_truncated_reference: false``, as for the DPO pairs); ``bases`` the provenance of
    each question."""
    rc_part, self_part = rc_split(run_ctx, options, questions)
    rows: list[SFTExample] = []
    skipped: Counter[str] = Counter()
    for q in rc_part:
        ref = refs.get(q.id)
        if ref is None:
            skipped["no_generations"] += 1
        elif q.passage_id not in passages:
            skipped["missing_passage"] += 1
        elif not ref.text.strip():
            skipped["reference_empty"] += 1
        elif ref.finish_reason == "length" and options.drop_truncated_reference:
            skipped["reference_truncated"] += 1
        else:
            prompt = rc_messages(passages[q.passage_id].text, q.text)[-1]["content"]
            rows.append(sft_row(q, prompt, ref.text.strip(), "rc", bases[q.id]))
    stats: dict[str, Any] = {"rc_questions": len(rc_part), "rc_skipped": dict(skipped)}
    if self_label_on(run_ctx, options) and self_part:
        labelled, label_stats = self_label(run_ctx, options, self_part)
        rows += [sft_row(q, q.text, labelled[q.id], "self", bases[q.id]) for q in self_part if q.id in labelled]
        stats.update(self_label_questions=len(self_part), **label_stats)
    else:
        stats["self_label"] = "off"
    return rows, stats


def sft_row(q: Question, prompt: str, completion: str, origin: str, base: dict[str, Any]) -> SFTExample:
    return SFTExample(
        id=content_hash([q.id, origin, prompt, completion], 16),
        question_id=q.id,
        prompt=prompt,
        completion=completion,
        origin=origin,
        provenance={**base, "origin": origin},
    )


def self_label_calls(run_ctx: RunContext, options: Any, questions: list[Question]) -> tuple[dict[str, str], GenerationParams]:
    """The few-shot prompt of each question and the decoding of the self-labelling calls
    (attempt ``i`` asks for sample index ``i``; the dry-run counts these against the cache)."""
    o = options
    params = GenerationParams(
        max_new_tokens=o.self_label_max_new_tokens,
        temperature=o.self_label_temperature,
        repetition_penalty=o.self_label_repetition_penalty,
        stop=("###",),
        seed=run_ctx.seed,
    )
    shots = _selflabel.EXAMPLES[: o.self_label_shots]
    prompts = {q.id: _selflabel.few_shot_prompt(q.text, q.id, run_ctx.seed, shots) for q in questions}
    return prompts, params


def self_label(run_ctx: RunContext, options: Any, questions: list[Question]) -> tuple[dict[str, str], dict[str, Any]]:
    """The base model's few-shot answers without the passage, sampled again (up to
    ``self_label_retries`` times) while an answer fails the quality checks; in shards of
    ``execution.shard_size`` questions on the run's engine (each shard runs its own retries)."""
    o = options
    task = Task("backend", "selflearn.core.stages._sftdata:self_label_shard", "self-labelling")
    probe = run_ctx.engine.probe(task)
    if not probe["raw"]:
        raise ConfigError(
            "self-labelling sends a raw few-shot text prompt, but the backend accepts chat "
            "messages only; use a backend that takes raw prompts or set self_label: off",
            "datasets.self_label",
        )
    prompts, params = self_label_calls(run_ctx, o, questions)
    size = run_ctx.execution.shard_size
    shards = [
        Shard({"prompts": [(q.id, prompts[q.id]) for q in questions[i:i + size]], "params": params,
               "retries": o.self_label_retries, "max_new_tokens": o.self_label_max_new_tokens},
              items=len(questions[i:i + size]))
        for i in range(0, len(questions), size)
    ]
    values, execution = run_shards(run_ctx.engine, task, shards)
    done: dict[str, str] = {}
    rejections: Counter[str] = Counter()
    for value in values:
        done.update(value["done"])
        rejections.update(value["rejections"])
    return done, {
        "self_label_rows": len(done),
        "self_label_failed": len(questions) - len(done),
        "self_label_rejections": dict(rejections),
        "self_label_backend": probe["identity"],
        "self_label_execution": execution,
    }


def self_label_shard(backend: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Run on an engine's worker: a shard's questions, attempt ``i`` asking for sample index
    ``i`` of the questions whose earlier answers failed the checks."""
    pending: list[tuple[str, str]] = list(payload["prompts"])
    done: dict[str, str] = {}
    rejections: Counter[str] = Counter()
    for attempt in range(payload["retries"]):
        if not pending:
            break
        replies = backend.generate([p for _, p in pending], payload["params"], n=1, sample_offset=attempt)
        still = []
        for (qid, prompt), comps in zip(pending, replies, strict=True):
            text, reason = _selflabel.check_answer(comps[0], payload["max_new_tokens"])
            if text is None:
                rejections[reason] += 1
                still.append((qid, prompt))
            else:
                done[qid] = text
        pending = still
    return {"done": done, "rejections": dict(rejections)}
