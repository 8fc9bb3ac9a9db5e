"""The pairwise judging protocol shared by the ``openai`` and ``local`` judges.

What the paper does (method.md 13.2), and what we keep:

- the judge sees the question, **the source passage**, and two responses, and answers "A" or
  "B": the one more truthful to the passage that better addresses the question;
- every item is judged in **both orders** (candidate as A, then candidate as B), so a judge
  that always prefers the first slot yields ties, not wins: win = candidate preferred in both,
  lose = baseline preferred in both, tie = the orders disagree (:meth:`Verdict.combine`);
- an answer that is neither A nor B is asked again (up to ``max_attempts`` per order, each
  attempt with its own seed and its own cache key); an item still unparseable is
  ``"unjudged"`` and counted apart by the reports, never dropped silently;
- every judge call is cached by content (judge identity, prompt, parameters, attempt), so a
  re-run or a resumed run makes no new calls.

The verdict parser is strict on purpose: the research code's substring tests read "I am not
sure" as a vote for A. We accept the whole answer being the letter (after stripping
whitespace, punctuation and markdown) or exactly one standalone single-letter token A/B.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ...core.cache import JsonlCache
from ...core.protocols import JudgeItem, Message
from ...core.records import Verdict

JUDGE_SYSTEM = (
    "You are an impartial judge. You compare two answers that AI assistants gave to the same "
    "question and decide which one is better. You are not swayed by the order in which the "
    "answers are shown, by their length, or by their style."
)

JUDGE_INSTRUCTION = (
    "Below are a question, the source passage the question was written from, and two "
    "responses, A and B. Decide which response is better. Judge first how truthful each "
    "response is with respect to the source passage (claims that the passage contradicts count "
    "against a response), then how well it addresses the question.\n\n"
    "Question:\n{question}\n\n"
    "Source passage:\n{passage}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    'Which response is better? Reply with only the letter "A" or "B".'
)

#: what the paper uses for the judge: one letter fits in 3 tokens with room for "A." etc.
DEFAULT_MAX_TOKENS = 3
#: tries per order before the order (and so the item) counts as unjudged (method.md 13.2)
DEFAULT_MAX_ATTEMPTS = 3

_STRIP = " \t\r\n.,;:!?\"'`*_#>()[]{}<>~-"
_TOKEN = re.compile(r"[A-Za-z0-9]+")


def judge_messages(question: str, passage: str, response_a: str, response_b: str) -> list[Message]:
    """The chat messages asking the judge to pick between ``response_a`` and ``response_b``."""
    user = JUDGE_INSTRUCTION.format(
        question=question.strip(),
        passage=passage.strip(),
        response_a=response_a.strip() or "(empty response)",
        response_b=response_b.strip() or "(empty response)",
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or None (unparseable).

    Accepted: the whole answer is the letter once whitespace, punctuation and markdown are
    stripped (``"A"``, ``" b. "``, ``"**B**"``, ``"(A)"``); or the answer contains exactly one
    standalone single-letter token that is an upper-case A or B (``"Response A"``,
    ``"Answer: B"``). Lower-case ``a`` inside a sentence is the article, not a vote. Anything
    else (``"AB"``, ``"A or B"``, ``"Apple"``, ``"Both"``, ``""``) is unparseable.
    """
    if text is None:
        return None
    core = text.strip().strip(_STRIP)
    if core.upper() in ("A", "B"):
        return core.upper()
    letters = [t for t in _TOKEN.findall(text) if t in ("A", "B")]
    return letters[0] if len(letters) == 1 else None


@attrs.frozen
class JudgeRequest:
    """One judge call: the messages of one order of one item, at one attempt."""

    messages: list[Message]
    attempt: int


#: ``complete(requests, on_result)`` calls the judge model for every request and reports each
#: answer with ``on_result(index, text)`` as soon as it arrives (so finished calls are cached
#: even when a later one fails or the spend cap stops the batch).
Complete = Callable[[Sequence[JudgeRequest], Callable[[int, str], None]], None]


class PairwiseProtocol:
    """Judges items in both orders through ``complete``, with retries and a content cache.

    ``identity`` and ``params`` enter every cache key; ``batch_size`` bounds how many calls
    are handed to ``complete`` at once (a killed run recomputes at most one batch).
    """

    def __init__(
        self,
        complete: Complete,
        *,
        identity: dict[str, Any],
        params: dict[str, Any],
        cache: JsonlCache | None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        batch_size: int = 64,
        progress: Callable[..., Any] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.complete = complete
        self.identity = identity
        self.params = params
        self.cache = cache
        self.max_attempts = max_attempts
        self.batch_size = max(1, batch_size)
        self.progress = progress
        self.calls = 0  # judge calls actually made (cache misses)
        self._lock = threading.Lock()

    def _key(self, request: JudgeRequest) -> str:
        return JsonlCache.key(
            "judge", self.identity, [dict(m) for m in request.messages], self.params, request.attempt
        )

    def _answers(self, requests: list[JudgeRequest]) -> list[str]:
        """The judge's raw answers, from the cache where possible."""
        out: list[str | None] = [None] * len(requests)
        keys = [self._key(r) for r in requests]
        missing: list[int] = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if isinstance(hit, str):
                out[i] = hit
            else:
                missing.append(i)
        batches = [missing[s : s + self.batch_size] for s in range(0, len(missing), self.batch_size)]
        iterator: Any = batches
        if self.progress is not None and len(batches) > 1:
            iterator = self.progress(batches, total=len(batches), desc="judge", unit="batch")
        for batch in iterator:
            def on_result(j: int, text: str, batch: list[int] = batch) -> None:
                i = batch[j]
                with self._lock:
                    out[i] = text
                    self.calls += 1
                if self.cache is not None:
                    self.cache.put(keys[i], text)

            self.complete([requests[i] for i in batch], on_result)
            lost = [i for i in batch if out[i] is None]
            if lost:
                raise RuntimeError(f"the judge returned no answer for {len(lost)} request(s)")
        return [o or "" for o in out]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One :class:`Verdict` per item (``first``: candidate shown as A)."""
        slots: list[tuple[int, int]] = [(i, order) for i in range(len(items)) for order in (0, 1)]
        messages: dict[tuple[int, int], list[Message]] = {}
        for i, order in slots:
            it = items[i]
            a, b = (it.candidate, it.baseline) if order == 0 else (it.baseline, it.candidate)
            messages[(i, order)] = judge_messages(it.question, it.passage, a, b)
        letter: dict[tuple[int, int], str | None] = {s: None for s in slots}
        raw: dict[tuple[int, int], list[str]] = {s: [] for s in slots}
        for attempt in range(self.max_attempts):
            pending = [s for s in slots if letter[s] is None]
            if not pending:
                break
            answers = self._answers([JudgeRequest(messages[s], attempt) for s in pending])
            for s, text in zip(pending, answers, strict=True):
                raw[s].append(text)
                letter[s] = parse_verdict(text)
        verdicts = []
        for i, it in enumerate(items):
            first = _side(letter[(i, 0)], candidate_is="A")
            second = _side(letter[(i, 1)], candidate_is="B")
            verdicts.append(
                Verdict(
                    question_id=it.question_id,
                    outcome=Verdict.combine(first, second),
                    first=first,
                    second=second,
                    provenance={
                        "judge": self.identity,
                        "params": self.params,
                        "answers": [raw[(i, 0)], raw[(i, 1)]],
                    },
                )
            )
        return verdicts


def _side(letter: str | None, *, candidate_is: str) -> str | None:
    if letter is None:
        return None
    return "candidate" if letter == candidate_is else "baseline"
