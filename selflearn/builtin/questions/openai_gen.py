"""``openai``: few-shot questions from any OpenAI-compatible chat endpoint.

The paper's question writer (gpt-3.5-turbo-0125, 3 shots, temperature 0.5, 64 tokens, one
question per passage, 3 attempts; method.md, section 4) through the shared client
(:mod:`selflearn.builtin.openai_client`): retries with backoff on 429 / 5xx / timeouts,
bounded concurrency, rate limits, token accounting with a cost estimate and a spend cap.

Every call is cached in the run's ``questions`` cache, keyed by (model, server URL, messages,
decoding parameters, question slot, attempt): running the same command again makes no HTTP
call at all. A missing API key for the official API is an error when the generator is built,
before any call; a refused key (401/403) stops the stage with a message naming the variable.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import attrs

from ..openai_client import ClientOptions, make_client
from .common import QuestionOptions, QuestionWriter, Reply, Request


@attrs.frozen
class Options(ClientOptions, QuestionOptions):
    """Connection options (``base_url``, ``model``, ``api_key_env``, prices, ``max_cost_usd``,
    ``concurrency``, ...) and the shared question options (``shots``, ``temperature``, ...)."""


def client_options(options: Options) -> ClientOptions:
    return ClientOptions(**{f.name: getattr(options, f.name) for f in attrs.fields(ClientOptions)})


class OpenAIQuestions(QuestionWriter):
    def __init__(self, options: Options, context: Any) -> None:
        super().__init__(options, context.seed, getattr(context, "path", "question_generator"))
        self.options = options
        self.client = make_client(client_options(options), context)  # fails early without a key
        self.cache = context.cache("questions")
        self.cached_calls = 0
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        o = self.options
        return {
            "generator": "openai",
            "model": o.model,
            "base_url": self.client.url,
            "shots": o.shots,
            "temperature": o.temperature,
            "max_new_tokens": o.max_new_tokens,
        }

    @property
    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = dict(self.client.usage)
        usage["cost_usd"] = round(float(usage["cost_usd"]), 6)
        usage["cached_calls"] = self.cached_calls
        return usage

    def _complete(self, requests: Sequence[Request]) -> list[Reply]:
        o = self.options

        def one(request: Request) -> Reply:
            params = {"temperature": request.temperature, "max_tokens": o.max_new_tokens}
            key = self.cache.key(
                "openai-questions",
                o.model,
                self.client.url,
                [dict(m) for m in request.messages],
                params,
                {"slot": request.slot, "attempt": request.attempt},
            )
            hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self.cached_calls += 1
                return Reply(**hit)
            # require_text: an empty or shapeless reply is retried, then an error; never cached
            result = self.client.chat(
                request.messages, temperature=request.temperature, max_tokens=o.max_new_tokens,
                require_text=True,
            )
            choice = result.choices[0]
            value: dict[str, Any] = {
                "text": choice.text,
                "finish_reason": choice.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
            self.cache.put(key, value)
            return Reply(**value)

        return self.client.map(one, requests)

    def close(self) -> None:
        self.client.close()


def create(options: Options, context: Any) -> OpenAIQuestions:
    return OpenAIQuestions(options, context)
