"""``echo``: a deterministic inference backend with no model, for tests and dry runs.

Greedy calls answer with the first sentence of the last user message's final paragraph block
that is not the question; sampled calls pick words of the prompt with a generator seeded by
(prompt, seed, sample index), so samples differ from each other, and a sample does not depend
on the batch it was generated in. Log-probabilities are those of a uniform choice over the
prompt's distinct words.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

import attrs

from ...core.hashing import seed_from
from ...core.options import bounded
from ...core.protocols import BackendCapabilities, GenerationParams, Prompt
from ...core.records import Completion


@attrs.frozen
class Options:
    #: words per sampled answer
    sample_words: int = bounded(12, ge=1, le=100_000)
    #: model name reported in the identity (to tell two echo backends apart)
    model: str = "echo"


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")


def _text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else (prompt[-1]["content"] if prompt else "")


def _greedy_answer(text: str) -> str:
    """The first sentence of the longest paragraph (the passage when there is one)."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    if not blocks:
        return ""
    block = max(blocks, key=len)
    block = block.split(":", 1)[1].strip() if block.lower().startswith("text:") else block
    match = re.match(r"(.+?[.!?])(\s|$)", block, re.S)
    return (match.group(1) if match else block).strip()


class EchoBackend:
    """See the module docstring."""

    capabilities = BackendCapabilities(chat=True, raw=True, logprobs=True, seed=True)

    def __init__(self, options: Options) -> None:
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"backend": "echo", "model": self.options.model}

    def _one(self, prompt: Prompt, params: GenerationParams, index: int) -> Completion:
        text = _text(prompt)
        words = _WORD.findall(text) or ["nothing"]
        if params.greedy:
            answer = _greedy_answer(text)
        else:
            rng = random.Random(seed_from(text, params.seed, index))
            answer = " ".join(rng.choice(words) for _ in range(self.options.sample_words)) + "."
        toks = answer.split()
        finish = "stop"
        if len(toks) > params.max_new_tokens:
            toks = toks[: params.max_new_tokens]
            answer = " ".join(toks)
            finish = "length"
        for stop in params.stop:
            if stop and stop in answer:
                answer = answer.split(stop, 1)[0]
                toks = answer.split()
                finish = "stop"
        logprob = -math.log(max(len(set(words)), 1))
        return Completion(
            text=answer,
            finish_reason=finish,
            prompt_tokens=len(words),
            completion_tokens=len(toks),
            logprobs=[logprob] * len(toks) if params.logprobs else None,
            tokens=list(toks) if params.logprobs else None,
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams,
        *,
        n: int = 1,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        return [
            [self._one(p, params, sample_offset + j) for j in range(n)] for p in prompts
        ]

    def close(self) -> None:
        pass


def create(options: Options, context: Any) -> EchoBackend:
    return EchoBackend(options)
