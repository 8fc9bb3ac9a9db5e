"""``bsdetector``: BSDetector-style confidence (Chen & Mueller, 2023), as method.md 8 describes.

Two signals, combined with weight ``beta``:

- **observed consistency** o_k = mean over the reference's sentences of P(entailment |
  sentence, sample k), from the same NLI engine, pair order and sentence split as
  ``selfcheck-nli``; o = mean_k o_k;
- **self-reflection**: the model under training (the pipeline's backend) is asked whether a
  proposed answer to the question is (A) correct, (B) incorrect or (C) unsure, greedily, a few
  tokens. A -> 1, B -> 0, C or an unparseable reply -> 0.5. The reply is parsed by exact
  letter tokens only ("I am not sure" is not "a"; the research code's substring test was).

confidence = beta * o + (1 - beta) * s, where s is the reflection on the reference y*
(``reflection_scope: reference``, the original BSDetector) or the mean over y* and the samples
(``all``, the research code). Item score = 1 - confidence (higher: less confident the model
knows). Per-sample score k = 1 - (beta * o_k + (1 - beta) * r_k) with r_k the reflection on
sample k, so the DPO rejected answer (highest per-sample score) is the sample least entailed by
y* and least endorsed by the model. With ``beta: 1`` no backend call is made. Simplified
relative to the original BSDetector (no indicator-match similarity, one reflection question).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ...core.errors import ConfigError
from ...core.options import bounded
from ...core.protocols import GenerationParams, ScoreItem, ScoreResult
from ._nli import Attention, NLIEngine, engine_from_options
from .nli import grid_scores, mean_or_none

REFLECTION_PROMPT = (
    "Question: {question}\n"
    "Proposed answer: {answer}\n\n"
    "Is the proposed answer:\n(A) Correct\n(B) Incorrect\n(C) I am not sure\n"
    "Reply with the letter of your choice only."
)
REFLECTION_VALUES = {"A": 1.0, "B": 0.0, "C": 0.5}

_LETTER = re.compile(r"(?<![A-Za-z])([ABC])(?![A-Za-z])")
_WORD = re.compile(r"[A-Za-z]+")
_FIRST_WORDS = {"correct": "A", "incorrect": "B", "unsure": "C"}


def parse_reflection(reply: str) -> str | None:
    """The letter a reflection reply chooses, or None.

    A standalone capital A, B or C is a choice ("A", "(B)", "Answer: C", "B. Incorrect"),
    except an "A" used as an article ("A correct answer"). Otherwise the reply's first word
    (after a leading article) decides when it is exactly "correct", "incorrect" or "unsure"
    (any case): "Correct." is A, "Not correct" is nothing. Letters inside words never count.
    """
    for match in _LETTER.finditer(reply):
        letter = match.group(1)
        rest = reply[match.end() :]
        if letter == "A" and re.match(r"\s+[a-z]", rest):
            continue  # the article: "A correct answer"
        return letter
    words = _WORD.findall(reply)
    if words and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    if words:
        return _FIRST_WORDS.get(words[0].lower())
    return None


@attrs.frozen
class Options:
    #: weight of observed consistency; 1 - beta goes to self-reflection (1.0: no reflection)
    beta: float = bounded(0.7, ge=0, le=1)
    #: whose reflection enters the item confidence: the reference only, or reference and samples
    reflection_scope: Literal["reference", "all"] = "reference"
    #: also ask for a reflection on each sample (needed for reflection-aware per-sample scores)
    reflect_samples: bool = True
    #: new tokens of a reflection reply (greedy)
    reflection_max_new_tokens: int = bounded(5, ge=1, le=1_000_000)
    reflection_repetition_penalty: float = bounded(1.1, gt=0)
    #: NLI model and engine options, as in selfcheck-nli
    model: str = "potsawee/deberta-v3-large-mnli"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int = bounded(512, ge=1)
    batch_size: int = bounded(256, ge=1)
    max_tokens_per_batch: int = bounded(32768, ge=1)
    attention: Attention = "auto"
    entailment_label: int | None = bounded(None, ge=0)
    contradiction_label: int | None = bounded(None, ge=0)


class BSDetector:
    """See the module docstring."""

    def __init__(self, options: Options, engine: NLIEngine, backend_factory: Any) -> None:
        if not 0.0 <= options.beta <= 1.0:
            raise ConfigError(f"expected a number in [0, 1], got {options.beta}", "scorer.options.beta")
        self.options = options
        self.engine = engine
        self._backend_factory = backend_factory
        self._backend: Any = None
        self.unparsed = 0  # reflection replies that chose no letter

    @property
    def uses_reflection(self) -> bool:
        return self.options.beta < 1.0

    def backend(self) -> Any:
        if self._backend is None:
            if self._backend_factory is None:
                raise ConfigError(
                    "bsdetector with beta < 1 asks the model for a self-reflection, but no "
                    "inference backend is available; configure `backend:` or set beta: 1.0",
                    "scorer.options.beta",
                )
            self._backend = self._backend_factory()
        return self._backend

    def identity(self) -> dict[str, Any]:
        o = self.options
        ident: dict[str, Any] = {"scorer": "bsdetector", "beta": o.beta, **self.engine.identity()}
        if self.uses_reflection:
            ident.update(
                reflection_scope=o.reflection_scope,
                reflect_samples=o.reflect_samples,
                reflection_prompt=REFLECTION_PROMPT,
                reflection_backend=self.backend().identity(),
            )
        return ident

    def reflect(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Self-reflection values of (question, answer) pairs, one batched backend call."""
        if not pairs:
            return []
        unique = list(dict.fromkeys(pairs))
        prompts = [
            [{"role": "user", "content": REFLECTION_PROMPT.format(question=q.strip(), answer=a.strip())}]
            for q, a in unique
        ]
        params = GenerationParams(
            max_new_tokens=self.options.reflection_max_new_tokens,
            temperature=0.0,
            repetition_penalty=self.options.reflection_repetition_penalty,
        )
        replies = self.backend().generate(prompts, params, n=1)
        values: dict[tuple[str, str], float] = {}
        for pair, completions in zip(unique, replies, strict=True):
            letter = parse_reflection(completions[0].text if completions else "")
            if letter is None:
                self.unparsed += 1
            values[pair] = REFLECTION_VALUES.get(letter or "C", 0.5)
        return [values[p] for p in pairs]

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        o = self.options
        grids = grid_scores(self.engine, items, "entailment")
        consistency = [
            [None if p is None or not p else sum(p) / len(p) for p in per_sample] for per_sample in grids
        ]
        reflections: dict[tuple[str, str], float] = {}
        if self.uses_reflection:
            wanted = []
            for item, cons in zip(items, consistency, strict=True):
                if item.reference.strip():
                    wanted.append((item.question, item.reference))
                if o.reflect_samples or o.reflection_scope == "all":
                    wanted += [(item.question, s) for s, c in zip(item.samples, cons, strict=True) if c is not None]
            reflections = dict(zip(wanted, self.reflect(wanted), strict=True))
        results = []
        for item, cons in zip(items, consistency, strict=True):
            o_item = mean_or_none(cons)
            if o_item is None:
                results.append(ScoreResult(None, [None] * len(item.samples)))
                continue
            if not self.uses_reflection:
                results.append(ScoreResult(1.0 - o_item, [None if c is None else 1.0 - c for c in cons]))
                continue
            r_ref = reflections[(item.question, item.reference)]
            r_samples = [
                reflections.get((item.question, s)) if c is not None else None
                for s, c in zip(item.samples, cons, strict=True)
            ]
            if o.reflection_scope == "all":
                s_item = mean_or_none([r_ref, *r_samples])
                assert s_item is not None
            else:
                s_item = r_ref
            per: list[float | None] = []
            for c, r in zip(cons, r_samples, strict=True):
                if c is None:
                    per.append(None)
                elif r is None:  # samples not reflected on: consistency alone
                    per.append(1.0 - c)
                else:
                    per.append(1.0 - (o.beta * c + (1.0 - o.beta) * r))
            results.append(ScoreResult(1.0 - (o.beta * o_item + (1.0 - o.beta) * s_item), per))
        return results

    def close(self) -> None:
        self.engine.close()


def create(options: Options, context: Any) -> BSDetector:
    factory = getattr(context, "backend", None) if context is not None else None
    return BSDetector(options, engine_from_options(options, context), factory)
