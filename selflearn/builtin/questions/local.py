"""``local``: the same few-shot prompts and checks through any inference backend.

This is how the offline default run writes its questions with the small local model. The
backend is the pipeline's own (``backend: null``) or one given in the options
(``backend: {use: hf, options: {...}}``); either way it is wrapped in the generation cache,
so a re-run generates nothing.

Requests of one round that share decoding parameters go to the backend in one batched call.
The first attempt is greedy when ``temperature`` is 0; retries (and extra questions per
passage) sample at ``retry_temperature`` with a seed per (question slot, attempt), so they
can differ from the rejected output and stay reproducible. Small instruction models often
add a preamble or an answer: the output is reduced to its first line with a question mark
and stripped of prefixes such as "Question:" (see :mod:`.prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ...core.hashing import seed_from
from ...core.protocols import GenerationParams, Message
from .common import QuestionOptions, QuestionWriter, Reply, Request


@attrs.frozen
class Options(QuestionOptions):
    #: the backend to generate with: None = the pipeline's backend, or a component given as
    #: a name or {use: NAME, options: {...}}
    backend: str | dict[str, Any] | None = None
    #: stop strings passed to the backend
    stop: list[str] = attrs.field(factory=list)


def render_plain(messages: Sequence[Message]) -> str:
    """A raw-text prompt for backends without chat support."""
    parts = []
    for m in messages:
        role = {"system": "Instructions", "user": "User", "assistant": "Assistant"}.get(m["role"], m["role"])
        parts.append(f"{role}: {m['content'].strip()}")
    return "\n\n".join(parts) + "\n\nAssistant:"


class LocalQuestions(QuestionWriter):
    def __init__(self, options: Options, context: Any) -> None:
        super().__init__(options, context.seed, getattr(context, "path", "question_generator"))
        self.options = options
        self.context = context
        self._backend: Any = None
        self.generated: int | None = 0  # completions the backend really generated (not cached)
        self.requests = 0
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0}

    @property
    def backend(self) -> Any:
        """Built on first use, so building the generator (e.g. to check options) is cheap."""
        if self._backend is None:
            if self.options.backend is None:
                self._backend = self.context.backend()
            else:
                self._backend = self.context.build("inference_backend", self.options.backend, "options.backend")
        return self._backend

    def identity(self) -> dict[str, Any]:
        o = self.options
        ident = self._backend.identity() if self._backend is not None else (o.backend or "pipeline")
        return {
            "generator": "local",
            "backend": ident,
            "shots": o.shots,
            "temperature": o.temperature,
            "max_new_tokens": o.max_new_tokens,
        }

    @property
    def usage(self) -> dict[str, Any]:
        return {"requests": self.requests, **self.tokens, "generated": self.generated, "cost_usd": 0.0}

    def _complete(self, requests: Sequence[Request]) -> list[Reply]:
        o = self.options
        backend = self.backend
        chat = bool(getattr(backend.capabilities, "chat", True))
        groups: dict[tuple[float, int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.slot, r.attempt), []).append(i)
        replies: list[Reply | None] = [None] * len(requests)
        for (temperature, slot, attempt), indices in groups.items():
            params = GenerationParams(
                max_new_tokens=o.max_new_tokens,
                temperature=temperature,
                seed=None if temperature <= 0 else seed_from("local-questions", self.seed, slot, attempt),
                stop=tuple(o.stop),
            )
            prompts = [
                requests[i].messages if chat else render_plain(requests[i].messages) for i in indices
            ]
            before = getattr(backend, "calls", None)
            results = backend.generate(prompts, params, n=1)
            after = getattr(backend, "calls", None)
            if isinstance(before, int) and isinstance(after, int) and self.generated is not None:
                self.generated += after - before
            else:  # a backend without a call counter: unknown
                self.generated = None
            for i, completions in zip(indices, results, strict=True):
                c = completions[0]
                self.tokens["prompt_tokens"] += c.prompt_tokens
                self.tokens["completion_tokens"] += c.completion_tokens
                replies[i] = Reply(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
        self.requests += len(requests)
        return [r if r is not None else Reply("") for r in replies]

    def close(self) -> None:
        """Close a backend built from the options (the pipeline closes its own)."""
        if self._backend is not None and self.options.backend is not None:
            self._backend.close()


def create(options: Options, context: Any) -> LocalQuestions:
    return LocalQuestions(options, context)
