"""``openai``: any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp's server, TGI's
Messages API) through the shared :mod:`selflearn.builtin.openai_client` (retries honouring
Retry-After, request and token rate limits, bounded concurrency, token and cost accounting).

* ``endpoint: chat`` sends chat-message prompts as they are and a raw string prompt as one
  user message; ``endpoint: completions`` sends raw strings as they are and renders chat
  prompts with a tokenizer's chat template first (``tokenizer`` option, default: the run's
  model), which is how a base model served by vLLM sees exactly the training format.
* K samples: by default ``n`` choices per request (at most ``max_n``), seeded with
  ``hash(seed, prompt, first sample index)``; that is the fastest (the server shares the
  prompt), and reproducible on servers that honour seeds, but samples 5..9 asked alone are not
  the samples 5..9 of a K=10 request. With ``seeded_samples: true`` each sample is its own
  request with ``seed = hash(seed, prompt, sample index)``, so on a server that honours seeds
  (vLLM, SGLang, llama.cpp) raising K only adds the new samples and they equal a fresh K run.
* The OpenAI API has no repetition penalty; vLLM and SGLang accept one as an extra parameter:
  ``send_repetition_penalty: true`` sends it (otherwise it is not applied, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ...core.errors import BackendError, ConfigError
from ...core.options import bounded
from ...core.protocols import BackendCapabilities, GenerationParams, Prompt
from ...core.records import Completion
from ..openai_client import ChatClient, ClientOptions, make_client
from ._remote import ChatRenderer, Job, cut_at_stop, gather_samples, sample_seed
from ._replicas import ReplicatedBackend, replica_urls

log = logging.getLogger("selflearn.openai")


@attrs.frozen
class Options(ClientOptions):
    """The client's connection options (base_url, api_key_env, timeout, max_retries, backoff,
    concurrency, requests_per_minute, tokens_per_minute, prices, max_cost_usd) plus these."""

    #: server URL, or a list of replicas of the same model (requests are spread over them and failed over); None: the official OpenAI API
    base_url: str | list[str] | None = None  # type: ignore[assignment]  # a list only here: create() splits it

    #: model name as the server knows it ("": the run's model)
    model: str = ""
    #: "chat" (/chat/completions) or "completions" (/completions, raw text)
    endpoint: Literal["chat", "completions"] = "chat"
    #: one request per sample, seeded by its index (exact sample_offset semantics)
    seeded_samples: bool = False
    #: most choices per request (OpenAI allows 128; some servers only 1)
    max_n: int = bounded(128, ge=1)
    #: sampling seed (None: the run's seed); a call's params.seed wins when set
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: tokenizer whose chat template renders chat prompts for the completions endpoint
    #: (None: the run's model)
    tokenizer: str | None = None
    #: Jinja chat template overriding the tokenizer's (completions endpoint)
    chat_template: str | None = None
    #: send repetition_penalty as an extra body parameter (vLLM, SGLang; not OpenAI)
    send_repetition_penalty: bool = False


class OpenAIBackend:
    """See the module docstring."""

    def __init__(self, options: Options, client: ChatClient, seed: int, tokenizer: str | None) -> None:
        if options.max_n < 1:
            raise ConfigError(f"expected a positive integer, got {options.max_n}", "backend.options.max_n")
        self.options = options
        self.client = client
        self.seed = seed
        self.capabilities = BackendCapabilities(
            chat=True, raw=True, logprobs=True, seed=True, max_n=None
        )
        self._renderer = ChatRenderer(tokenizer, options.chat_template, f"openai at {client.url}")
        self._warned = False

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "backend": "openai",
            "base_url": self.client.url.rstrip("/"),
            "model": self.options.model,
            "endpoint": self.options.endpoint,
            "seed": self.seed,
            "seeded_samples": self.options.seeded_samples,
            "repetition_penalty_sent": self.options.send_repetition_penalty,
        }
        if self.options.endpoint == "completions":
            ident.update(self._renderer.identity())
        return ident

    def usage(self) -> dict[str, float]:
        """Requests, retries, prompt and completion tokens and estimated cost so far."""
        return dict(self.client.usage)

    def _request(
        self, prompt: Prompt, params: GenerationParams, n: int, seed: int | None
    ) -> list[Completion]:
        """One request; ``prompt`` is already in the endpoint's form (see :meth:`_sendable`)."""
        o = self.options
        kwargs: dict[str, Any] = {
            "temperature": 0.0 if params.greedy else params.temperature,
            "max_tokens": params.max_new_tokens,
            "n": n,
            "top_p": None if params.greedy else params.top_p,
            "seed": None if params.greedy else seed,
            "stop": list(params.stop) or None,
            "logprobs": params.logprobs,
        }
        if params.repetition_penalty != 1.0:
            if o.send_repetition_penalty:
                kwargs["extra_body"] = {"repetition_penalty": params.repetition_penalty}
            elif not self._warned:
                self._warned = True
                log.warning("openai: repetition_penalty %s is not applied (set "
                            "send_repetition_penalty: true for vLLM/SGLang)", params.repetition_penalty)
        if isinstance(prompt, str) and o.endpoint == "completions":
            res = self.client.complete(prompt, **kwargs)
        else:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            res = self.client.chat(messages, **kwargs)
        per_choice_prompt = res.prompt_tokens
        comps = []
        for c in res.choices:
            text, stopped, keep = cut_at_stop(c.text, params.stop, c.tokens)
            lps, toks = c.logprobs, c.tokens
            if keep is not None and toks is not None:
                toks, lps = toks[:keep], (lps[:keep] if lps is not None else None)
            n_tok = len(toks) if toks is not None else res.completion_tokens // max(1, len(res.choices))
            comps.append(Completion(
                text=text,
                finish_reason="stop" if stopped else ("length" if c.finish_reason == "length" else "stop"),
                prompt_tokens=per_choice_prompt,
                completion_tokens=n_tok,
                logprobs=lps if params.logprobs else None,
                tokens=toks if params.logprobs else None,
            ))
        return comps

    def _sendable(self, prompt: Prompt) -> Prompt:
        """Chat prompts for the completions endpoint rendered with the chat template (here, in
        the calling thread, before the requests go out)."""
        if self.options.endpoint == "completions" and not isinstance(prompt, str):
            return self._renderer.render(prompt)
        return prompt

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams,
        *,
        n: int = 1,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        seed = params.seed if params.seed is not None else self.seed
        per_prompt = 1 if params.greedy else n
        step = 1 if self.options.seeded_samples else self.options.max_n
        jobs: list[Job] = [(pi, j, min(step, per_prompt - j)) for pi in range(len(prompts))
                           for j in range(0, per_prompt, step)]
        sendable = [self._sendable(p) for p in prompts]

        def request(pi: int, j: int, count: int) -> list[Completion]:
            s = sample_seed(seed, prompts[pi], sample_offset + j)
            comps = self._request(sendable[pi], params, count, s)
            if len(comps) != count:
                raise BackendError(
                    f"{self.client.url} returned {len(comps)} choices for n={count} (model "
                    f"{self.options.model!r}); set backend.options.max_n to what the server supports"
                )
            return comps

        return gather_samples(
            len(prompts), n, params.greedy, jobs, request, self.client.options.concurrency
        )

    def close(self) -> None:
        self.client.close()


def create(options: Options, context: Any) -> OpenAIBackend | ReplicatedBackend:
    urls = replica_urls(options.base_url, f"{getattr(context, 'path', 'backend')}.options.base_url")
    if urls is not None:
        replicas = [_create(attrs.evolve(options, base_url=url), context) for url in urls]
        return ReplicatedBackend(replicas, [r.client.url for r in replicas], "base_url")
    return _create(options, context)


def _create(options: Options, context: Any) -> OpenAIBackend:
    model = options.model or getattr(context, "model", None) or ""
    if not model:
        raise ConfigError(
            "no model: set backend.options.model to the name the server serves",
            "backend.options.model",
        )
    options = attrs.evolve(options, model=model)
    client_opts = ClientOptions(**{f.name: getattr(options, f.name) for f in attrs.fields(ClientOptions)})
    client = make_client(client_opts, context)
    seed = options.seed if options.seed is not None else int(getattr(context, "seed", 42))
    tokenizer = options.tokenizer or getattr(context, "model", None)
    return OpenAIBackend(options, client, seed, tokenizer)
