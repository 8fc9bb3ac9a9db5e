"""The part of question generation that does not depend on where the model runs.

:class:`QuestionWriter` builds the few-shot prompts, checks every output
(:func:`.prompts.check_question`), rejects duplicates within a document and retries, and turns
accepted outputs into :class:`Question` records. Subclasses only implement
:meth:`QuestionWriter._complete` (one model call per request, in order): the ``openai``
generator over an OpenAI-compatible chat endpoint, the ``local`` one over any inference
backend.

Determinism, so that a re-run hits the caches: the shots of a request are drawn by a
generator seeded by ``(seed, passage id, question slot, attempt)``, and the request carries
its slot and attempt, which enter the cache keys.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs

from ...core.errors import ConfigError
from ...core.hashing import seed_from
from ...core.options import bounded
from ...core.protocols import Message
from ...core.records import Passage, Question
from .prompts import (
    DEFAULT_BANNED_WORDS,
    POOL,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    banned_pattern,
    build_messages,
    check_question,
    normalize_question,
)


@attrs.frozen(slots=False)  # not slotted: combined with ClientOptions by the openai generator
class QuestionOptions:
    """Options shared by the ``openai`` and ``local`` question generators."""

    #: few-shot examples per call, drawn from our pool of 12
    shots: int = bounded(3, ge=0)
    #: sampling temperature of the first attempt (0: greedy)
    temperature: float = bounded(0.5, ge=0)
    #: most tokens of one generated question
    max_new_tokens: int = bounded(64, ge=1, le=1_000_000)
    #: calls per question before the passage is given up (invalid or duplicate outputs retry)
    attempts: int = bounded(3, ge=1, le=100)
    #: temperature of retries and extra questions when ``temperature`` is 0 (greedy would
    #: only repeat the rejected output)
    retry_temperature: float = bounded(0.7, ge=0)
    #: whole words a question must not contain (plurals included, any case)
    banned_words: list[str] = attrs.field(factory=lambda: list(DEFAULT_BANNED_WORDS))
    #: system prompt (None: the built-in wording; "" for none)
    system_prompt: str | None = None
    #: user-turn template with {topic} and {passage} (None: the built-in wording)
    user_template: str | None = None


@attrs.frozen
class Request:
    passage: Passage
    slot: int  # which question of the passage (0 .. per_passage - 1)
    attempt: int
    messages: list[Message]
    temperature: float
    seed: int
    shots: list[str]  # topics of the few-shot examples


@attrs.frozen
class Reply:
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def check_options(options: QuestionOptions, path: str) -> None:
    if options.attempts < 1:
        raise ConfigError(f"expected at least 1, got {options.attempts}", f"{path}.options.attempts")
    if not 0 <= options.shots <= len(POOL):
        raise ConfigError(
            f"expected 0 to {len(POOL)} (the size of the example pool), got {options.shots}",
            f"{path}.options.shots",
        )
    if options.max_new_tokens < 1:
        raise ConfigError(f"expected at least 1, got {options.max_new_tokens}", f"{path}.options.max_new_tokens")
    template = options.user_template
    if template is not None and ("{passage}" not in template or "{topic}" not in template):
        raise ConfigError(
            "the template must contain {topic} and {passage}", f"{path}.options.user_template"
        )


class QuestionWriter:
    """Prompts, checks, retries and records; see the module docstring."""

    name = "questions"

    def __init__(self, options: QuestionOptions, seed: int, path: str) -> None:
        check_options(options, path)
        self.q_options = options
        self.seed = seed
        self._banned = banned_pattern(options.banned_words)
        #: counts of outcomes over every call of :meth:`generate` (rejections by reason, ...)
        self.stats: Counter[str] = Counter()

    # -- to implement ----------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def _complete(self, requests: Sequence[Request]) -> list[Reply]:
        """One reply per request, in order (cached by the implementation)."""
        raise NotImplementedError

    @property
    def usage(self) -> dict[str, Any]:
        """Calls, tokens and cost so far, for the stage summary and the manifest."""
        return {}

    # -- shared ----------------------------------------------------------------------------
    def _request(self, passage: Passage, slot: int, attempt: int) -> Request:
        o = self.q_options
        rng = random.Random(seed_from("question-shots", self.seed, passage.id, slot, attempt))
        candidates = [ex for ex in POOL if ex.topic.lower() != passage.title.strip().lower()]
        shots = rng.sample(candidates, min(o.shots, len(candidates)))
        messages = build_messages(
            passage.title,
            passage.text,
            shots,
            system=SYSTEM_PROMPT if o.system_prompt is None else o.system_prompt,
            template=o.user_template or USER_TEMPLATE,
        )
        greedy_first = o.temperature <= 0 and slot == 0 and attempt == 0
        temperature = o.temperature if (o.temperature > 0 or greedy_first) else o.retry_temperature
        return Request(
            passage=passage,
            slot=slot,
            attempt=attempt,
            messages=messages,
            temperature=temperature,
            seed=seed_from("question", self.seed, passage.id, slot, attempt),
            shots=[ex.topic for ex in shots],
        )

    def generate(
        self, passages: Sequence[Passage], *, per_passage: int = 1, split: str = "train"
    ) -> list[Question]:
        """Up to ``per_passage`` questions per passage, in passage order.

        All passages of a document should be in the same call: a question already accepted
        for the document makes an equal one a duplicate, which is retried.
        """
        seen: dict[str, set[str]] = {}
        accepted: dict[tuple[str, int], tuple[str, Request, Reply]] = {}
        pending = [(p, s) for p in passages for s in range(per_passage)]
        for attempt in range(self.q_options.attempts):
            if not pending:
                break
            requests = [self._request(p, s, attempt) for p, s in pending]
            replies = self._complete(requests)
            self.stats["calls"] += len(requests)
            retry = []
            for (passage, slot), request, reply in zip(pending, requests, replies, strict=True):
                doc_seen = seen.setdefault(passage.document_id, set())
                question, reason = check_question(
                    reply.text, finish_reason=reply.finish_reason, seen=doc_seen, banned=self._banned
                )
                if question is None:
                    self.stats[f"rejected_{reason}"] += 1
                    retry.append((passage, slot))
                    continue
                doc_seen.add(normalize_question(question))
                accepted[(passage.id, slot)] = (question, request, reply)
            pending = retry
        self.stats["failed"] += len(pending)
        self.stats["accepted"] += len(accepted)
        out = []
        for passage in passages:
            for slot in range(per_passage):
                if (passage.id, slot) in accepted:
                    out.append(self._record(*accepted[(passage.id, slot)], split=split))
        return out

    def _record(self, question: str, request: Request, reply: Reply, *, split: str) -> Question:
        p = request.passage
        return Question(
            id=f"{p.id}#q{request.slot}",
            passage_id=p.id,
            document_id=p.document_id,
            text=question,
            split=split,
            provenance={
                "generator": self.identity(),
                "attempt": request.attempt,
                "temperature": request.temperature,
                "shots": request.shots,
                "finish_reason": reply.finish_reason,
                "raw": reply.text,
            },
            metadata={"title": p.title, "category": p.metadata.get("category")},
        )
