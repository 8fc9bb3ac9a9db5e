"""``openai`` judge: pairwise verdicts from any OpenAI-compatible chat endpoint.

The paper's judge is GPT-4 (the research code calls ``gpt-4o``) at temperature 0.3 with at most
3 new tokens, shown the question, the source passage and the two responses, in both orders
(:mod:`.common`). Any server speaking the chat-completions protocol works: OpenAI, vLLM,
SGLang, llama.cpp's server, TGI's Messages API. The shared client gives bounded concurrency,
retries with backoff, token accounting with a cost estimate, and a spend cap
(``max_cost_usd``) that stops the stage cleanly; every call is cached, so running the same
command again after the cap resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ...core.options import bounded
from ...core.protocols import JudgeItem
from ...core.records import Verdict
from ..openai_client import ChatClient, ClientOptions, make_client
from .common import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_TOKENS, JudgeRequest, PairwiseProtocol

if TYPE_CHECKING:
    from ...core.context import ComponentContext


@attrs.frozen
class Options(ClientOptions):
    """The client's connection options (``base_url``, ``api_key_env``, ``concurrency``,
    prices, ``max_cost_usd``, ...) plus the judge's own."""

    #: the judge model (the research code's judge)
    model: str = "gpt-4o"
    #: sampling temperature of the judge (the paper: 0.3)
    temperature: float = bounded(0.3, ge=0)
    #: most tokens of the judge's answer (the paper: 3; the answer is one letter)
    max_tokens: int = bounded(DEFAULT_MAX_TOKENS, ge=1, le=1_000_000)
    #: calls per order before an unparseable order makes the item "unjudged"
    max_attempts: int = bounded(DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    #: base seed sent with each call (attempt k sends seed + k); None: the run's seed
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: USD per million prompt tokens (gpt-4o's list price; set your model's)
    price_input_per_mtok: float = bounded(2.5, ge=0)
    #: USD per million completion tokens (gpt-4o's list price; set your model's)
    price_output_per_mtok: float = bounded(10.0, ge=0)


def client_options(options: Options) -> ClientOptions:
    """The :class:`ClientOptions` part of the judge's options."""
    return ClientOptions(**{f.name: getattr(options, f.name) for f in attrs.fields(ClientOptions)})


class OpenAIJudge:
    """A :class:`selflearn.plugins.Judge` over an OpenAI-compatible endpoint."""

    def __init__(
        self,
        options: Options,
        client: ChatClient,
        *,
        seed: int,
        cache: Any,
        progress: Callable[..., Any] | None = None,
    ) -> None:
        self.options = options
        self.client = client
        self.seed = options.seed if options.seed is not None else seed
        self.protocol = PairwiseProtocol(
            self._complete,
            identity=self.identity(),
            params={
                "temperature": options.temperature,
                "max_tokens": options.max_tokens,
                "seed": self.seed,
            },
            cache=cache,
            max_attempts=options.max_attempts,
            batch_size=max(options.concurrency * 4, 16),
            progress=progress,
        )

    def identity(self) -> dict[str, Any]:
        return {"judge": "openai", "base_url": self.client.url, "model": self.options.model}

    @property
    def usage(self) -> dict[str, float]:
        """Requests, retries, tokens and estimated cost (USD) of this judge's calls so far."""
        return dict(self.client.usage)

    def _complete(self, requests: Sequence[JudgeRequest], on_result: Callable[[int, str], None]) -> None:
        o = self.options

        def one(index: int) -> None:
            req = requests[index]
            res = self.client.chat(
                [dict(m) for m in req.messages],
                temperature=o.temperature,
                max_tokens=o.max_tokens,
                seed=self.seed + req.attempt,
            )
            # a shapeless reply, or an empty one no generated token backs, was retried by the
            # client and never gets here; a model's own empty answer is unparseable, so the
            # protocol asks again with the next seed and, after max_attempts, says "unjudged"
            on_result(index, res.choices[0].text)

        self.client.map(one, range(len(requests)))

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return self.protocol.judge(items)

    def close(self) -> None:
        self.client.close()


def create(options: Options, context: ComponentContext) -> OpenAIJudge:
    client = make_client(client_options(options), context)
    return OpenAIJudge(
        options, client, seed=context.seed, cache=context.cache("judge"), progress=context.progress
    )
