"""``tgi``: a client for a text-generation-inference server (``POST /generate``).

K samples per prompt, two ways (option ``samples``):

* ``seeded`` (default): one request per sample, ``do_sample`` with ``seed = hash(seed, prompt,
  sample index)``, up to ``concurrency`` requests in flight. Sample ``j`` depends only on (seed,
  prompt, parameters, ``j``), so the cache can ask for samples 5..9 alone when K grows from 5
  to 10 and get what a K=10 run would have produced, and a re-run is reproducible.
* ``best_of``: the research code's way, one request with ``best_of=K`` and ``details`` (the
  main sequence plus ``details.best_of_sequences``). TGI refuses a seed with ``best_of > 1``,
  so these samples are not reproducible (the cache still keeps them); requests are split when
  K exceeds the server's ``max_best_of``.

Chat prompts are rendered client-side with a tokenizer's chat template (``chat: template``,
as the research code did) or sent to TGI's Messages API ``/v1/chat/completions``
(``chat: messages``; that API has no repetition penalty, so it is not applied there).
``GET /info`` is read once: it tells an unreachable server from a slow one and gives the
model id. Retries with exponential backoff honour ``Retry-After`` on 429 and retry 5xx,
timeouts and dropped connections.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import attrs

from ...core.errors import AuthenticationError, BackendError, ConfigError
from ...core.options import bounded, secret_name
from ...core.protocols import BackendCapabilities, GenerationParams, Prompt
from ...core.records import Completion
from ...core.redact import safe_url
from ._remote import (
    ChatRenderer,
    Job,
    MalformedReply,
    backoff_delay,
    cut_at_stop,
    excerpt,
    gather_samples,
    json_body,
    parse_retry_after,
    sample_seed,
    server_reason,
)
from ._replicas import ReplicatedBackend, replica_urls

log = logging.getLogger("selflearn.tgi")
T = TypeVar("T")


@attrs.frozen
class Options:
    #: the server's URL (text-generation-launcher's --port; no trailing path), or a list of replicas of the same model (requests are spread over them and failed over)
    url: str | list[str] = "http://127.0.0.1:8080"
    #: the model id the server must be serving (checked against GET /info); None: any
    model: str | None = None
    #: "template": render chat prompts with a tokenizer's chat template and call /generate;
    #: "messages": send them to TGI's Messages API /v1/chat/completions
    chat: Literal["template", "messages"] = "template"
    #: tokenizer for chat templates (None: the run's model, else the server's model id)
    tokenizer: str | None = None
    #: Jinja chat template overriding the tokenizer's
    chat_template: str | None = None
    #: "seeded" (one seeded request per sample) or "best_of" (one request with best_of=K)
    samples: Literal["seeded", "best_of"] = "seeded"
    #: sampling seed (None: the run's seed); a call's params.seed wins when set
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: requests in flight at once (the research code used 10 threads)
    concurrency: int = bounded(10, ge=1)
    #: seconds before a request times out
    timeout: float = bounded(300.0, gt=0)
    #: attempts per request on 429 / 5xx / timeouts / dropped connections
    max_retries: int = bounded(6, ge=1)
    #: first backoff in seconds (doubles each attempt, with jitter; Retry-After wins)
    backoff: float = bounded(1.0, ge=0)
    #: longest single wait in seconds
    max_backoff: float = bounded(60.0, ge=0)
    #: seconds to wait for a server that is still starting (GET /info) before giving up
    wait_for_server: float = bounded(0.0, ge=0)
    #: TGI's ``truncate``: keep only the last N prompt tokens (None: the server's limits apply)
    truncate: int | None = bounded(None, ge=1)
    #: ask for the prompt's tokens (decoder_input_details) to count prompt tokens exactly
    decoder_input_details: bool = False
    #: environment variable / secret with a bearer token (servers behind authentication)
    api_key_env: str | None = secret_name(None)


_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop", "stop": "stop"}


class TGIBackend:
    """See the module docstring."""

    def __init__(self, options: Options, tokenizer: str | None, seed: int, token: str | None) -> None:
        import httpx

        if options.concurrency < 1 or options.max_retries < 1:
            raise ConfigError("concurrency and max_retries must be at least 1", "backend.options")
        self.options = options
        self._base = str(options.url).rstrip("/")  # one replica: create() splits a list
        #: the server as errors and logs show it (credentials in the URL redacted)
        self.url = safe_url(self._base)
        self.seed = seed
        self.capabilities = BackendCapabilities(
            chat=True, raw=True, logprobs=True, seed=options.samples == "seeded", max_n=None
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=options.concurrency + 2)
        self._http = httpx.Client(timeout=options.timeout, headers=headers, limits=limits)
        self._info: dict[str, Any] | None = None
        self._tokenizer_ref = tokenizer
        #: values redacted from anything quoted from the server
        self._secrets: tuple[str, ...] = (token,) if token else ()
        self._renderer: ChatRenderer | None = None
        self._lock = threading.Lock()
        self.usage_counts: dict[str, int] = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}

    # -- server info and identity ---------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """GET /info once; a clear error when the server is unreachable or serves another model."""
        if self._info is not None:
            return self._info
        import httpx

        deadline = time.monotonic() + self.options.wait_for_server
        while True:
            try:
                resp = self._http.get(f"{self._base}/info", timeout=min(self.options.timeout, 30.0))
                break
            except httpx.HTTPError as exc:
                if time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise BackendError(
                    f"cannot reach the TGI server at {self.url} (GET {self.url}/info: "
                    f"{type(exc).__name__}: {exc}). Start it (see docs/backends.md: "
                    "text-generation-launcher --model-id MODEL --port PORT ...), or fix "
                    "backend.options.url"
                ) from None
        if resp.status_code in (401, 403):
            raise AuthenticationError(
                f"the TGI server at {self.url} refused the request (HTTP {resp.status_code}); "
                f"set backend.options.api_key_env to the variable holding its token"
            )
        try:
            info = resp.json()
        except ValueError:
            info = None
        if resp.status_code != 200 or not isinstance(info, dict):
            raise BackendError(
                f"{self.url}/info answered HTTP {resp.status_code} without TGI's JSON info "
                f"(received {excerpt(resp.text, secrets=self._secrets)}): is this a "
                "text-generation-inference server? (for OpenAI-compatible servers use the "
                "`openai` backend)"
            )
        served = info.get("model_id")
        want = self.options.model
        if want and served != want:
            raise BackendError(
                f"the TGI server at {self.url} serves model {served!r}, but backend.options.model "
                f"is {want!r}: start the server with --model-id {want} or set model: {served}"
            )
        self._info = info
        return info

    def _model_id(self) -> str:
        return self.options.model or str(self.info().get("model_id"))

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "backend": "tgi",
            "model": self._model_id(),
            "samples": self.options.samples,
            "seed": self.seed,
            "chat": self.options.chat,
        }
        if self.options.chat == "template":
            ident.update(self._chat().identity())
        if self.options.truncate is not None:
            ident["truncate"] = self.options.truncate
        return ident

    def _chat(self) -> ChatRenderer:
        if self._renderer is None:
            ref = self._tokenizer_ref or self._model_id()
            self._renderer = ChatRenderer(ref, self.options.chat_template, f"tgi at {self.url}")
        return self._renderer

    def usage(self) -> dict[str, int]:
        with self._lock:
            return dict(self.usage_counts)

    # -- HTTP with retries ----------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any], parse: Callable[[str], T]) -> T:
        """POST ``payload`` and ``parse`` the 200 reply's body, with the retry policy: 429,
        408, 5xx, timeouts, dropped connections and malformed replies (``parse`` raised
        :class:`MalformedReply`) are retried with backoff (Retry-After wins), then a clear
        error; 401/403 and other 4xx fail at once with the server's reason."""
        import httpx

        o = self.options
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            malformed: MalformedReply | None = None
            try:
                resp = self._http.post(f"{self._base}{path}", json=payload)
            except httpx.HTTPError as exc:  # timeouts, refused or dropped connections
                what = type(exc).__name__
            else:
                if resp.status_code == 200:
                    try:
                        return self._parsed(resp.text, parse)
                    except MalformedReply as exc:
                        malformed, what = exc, f"malformed reply ({exc.what})"
                else:
                    self._refused(path, resp)
                    what = f"HTTP {resp.status_code}"
                    retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if attempt >= o.max_retries:
                raise self._gave_up(path, what, attempt, malformed)
            delay = retry_after
            if delay is None:
                delay = backoff_delay(attempt, o.backoff, o.max_backoff)
            with self._lock:
                self.usage_counts["retries"] += 1
            log.warning("%s%s: %s, retrying in %.1fs (attempt %d/%d)",
                        self.url, path, what, delay, attempt + 1, o.max_retries)
            time.sleep(min(delay, o.max_backoff))

    def _parsed(self, text: str, parse: Callable[[str], T]) -> T:
        """``parse(text)``, counting the request once it parsed."""
        value = parse(text)
        with self._lock:
            self.usage_counts["requests"] += 1
        return value

    def _refused(self, path: str, resp: Any) -> None:
        """Raise for a status that retrying cannot fix (401/403, 4xx other than 408/429)."""
        status = resp.status_code
        if status in (401, 403):
            raise AuthenticationError(
                f"the TGI server at {self.url} refused the request (HTTP {status}: "
                f"{server_reason(resp.text, self._secrets)}); check backend.options.api_key_env"
            )
        if status != 429 and status < 500 and status != 408:
            raise BackendError(
                f"the TGI server at {self.url} rejected POST {path} (HTTP {status}): "
                f"{server_reason(resp.text, self._secrets)}"
            )

    def _gave_up(self, path: str, what: str, attempts: int, malformed: MalformedReply | None) -> BackendError:
        """The error after the last attempt; a malformed reply is quoted (redacted)."""
        if malformed is not None:
            return BackendError(
                f"the TGI server at {self.url} answered POST {path} {attempts} times with a "
                f"reply that is not TGI's: {malformed.what}; the last reply was "
                f"{excerpt(malformed.body, secrets=self._secrets)}. Check that backend.options.url "
                "points at text-generation-inference (for an OpenAI-compatible server use the "
                "`openai` backend) and that no proxy answers in its place; nothing from these "
                "replies was stored, finished samples are cached"
            )
        return BackendError(
            f"the TGI server at {self.url} kept failing on POST {path} ({what}) after "
            f"{attempts} attempts; finished samples are cached, run again to resume"
        )

    # -- one request ------------------------------------------------------------------------
    def _generate_request(
        self, text: str, params: GenerationParams, *, seed: int | None, best_of: int = 1
    ) -> list[Completion]:
        p: dict[str, Any] = {
            "do_sample": not params.greedy,
            "max_new_tokens": params.max_new_tokens,
            "details": True,
            "decoder_input_details": self.options.decoder_input_details,
        }
        if not params.greedy:
            p["temperature"] = params.temperature
            if params.top_p < 1.0:  # TGI requires 0 < top_p < 1
                p["top_p"] = params.top_p
            if seed is not None:
                p["seed"] = seed
        if params.repetition_penalty != 1.0:
            p["repetition_penalty"] = params.repetition_penalty
        if params.stop:
            p["stop"] = list(params.stop)
        if best_of > 1:
            p["best_of"] = best_of
        if self.options.truncate is not None:
            p["truncate"] = self.options.truncate
        data = self._post("/generate", {"inputs": text, "parameters": p}, parse_generate)
        details = data[0][1]
        prefill = len(details.get("prefill") or []) or self._chat_count(text)
        return [self._completion(t, d, params, prefill) for t, d in data]

    def _chat_count(self, text: str) -> int:
        return self._renderer.count(text) if self._renderer is not None else 0

    def _completion(self, text: str, d: dict[str, Any], params: GenerationParams, prompt_tokens: int) -> Completion:
        toks = d.get("tokens") or []
        pieces = [str(t.get("text", "")) for t in toks]
        lps = [float(t.get("logprob") or 0.0) for t in toks]
        finish = _FINISH.get(str(d.get("finish_reason")), "stop")
        text, stopped, keep = cut_at_stop(text, params.stop, pieces if toks else None)
        if stopped:
            finish = "stop"
            if keep is not None:
                pieces, lps = pieces[:keep], lps[:keep]
        n_tok = len(pieces) if toks else int(d.get("generated_tokens") or 0)
        with self._lock:
            self.usage_counts["prompt_tokens"] += prompt_tokens
            self.usage_counts["completion_tokens"] += n_tok
        return Completion(
            text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=n_tok,
            logprobs=lps if params.logprobs and toks else None,
            tokens=pieces if params.logprobs and toks else None,
        )

    def _messages_request(self, messages: Sequence[Any], params: GenerationParams, seed: int | None) -> Completion:
        body: dict[str, Any] = {
            "model": "tgi",
            "messages": [dict(m) for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": 0.0 if params.greedy else params.temperature,
        }
        if not params.greedy:
            if params.top_p < 1.0:
                body["top_p"] = params.top_p
            if seed is not None:
                body["seed"] = seed
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body["logprobs"] = True
        text, d, pt = self._post("/v1/chat/completions", body, parse_messages)
        return self._completion(text, d, params, pt)

    # -- the protocol ------------------------------------------------------------------------
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
        info = self.info()
        if params.repetition_penalty != 1.0 and self.options.chat == "messages" and any(
            not isinstance(p, str) for p in prompts
        ):
            log.warning("tgi: the Messages API has no repetition_penalty; it is not applied")
        seed = params.seed if params.seed is not None else self.seed
        per_prompt = 1 if params.greedy else n
        # work items: (prompt index, first sample, how many samples the request returns)
        jobs: list[Job] = []
        for pi in range(len(prompts)):
            if params.greedy or self.options.samples == "seeded":
                jobs += [(pi, j, 1) for j in range(per_prompt)]
            else:
                cap = max(1, int(info.get("max_best_of") or n))
                jobs += [(pi, j, min(cap, n - j)) for j in range(0, n, cap)]
        texts: dict[int, str] = {}
        for pi, p in enumerate(prompts):
            if isinstance(p, str):
                texts[pi] = p
            elif self.options.chat == "template":
                texts[pi] = self._chat().render(p)

        def request(pi: int, j: int, count: int) -> list[Completion]:
            s = None if (self.options.samples == "best_of" and not params.greedy) else sample_seed(
                seed, prompts[pi], sample_offset + j
            )
            if pi in texts:
                comps = self._generate_request(texts[pi], params, seed=s, best_of=count)
            else:
                comps = [self._messages_request(prompts[pi], params, s)]
            if len(comps) < count:
                raise BackendError(
                    f"the TGI server at {self.url} returned {len(comps)} sequences for "
                    f"best_of={count}; is --max-best-of at least {count}?"
                )
            return comps

        return gather_samples(len(prompts), n, params.greedy, jobs, request, self.options.concurrency)

    def close(self) -> None:
        self._http.close()


def parse_generate(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The sequences of a ``/generate`` reply: (generated text, its details), the main one
    first, then ``details.best_of_sequences``. Raises :class:`MalformedReply` for a body of
    another shape (a reply without ``generated_text`` must never become an empty sample)."""
    data = json_body(body)
    if isinstance(data, list) and len(data) == 1:  # some versions answer a one-element list
        data = data[0]
    if not isinstance(data, dict) or not isinstance(data.get("generated_text"), str):
        raise MalformedReply("no `generated_text` string", body)
    details = data.get("details") or {}
    if not isinstance(details, dict):
        raise MalformedReply("`details` is not an object", body)
    if not data["generated_text"].strip() and not _generated(details, body):
        # a model that ends at once still generated its end-of-sequence token
        raise MalformedReply("an empty `generated_text` with no generated token counted", body)
    seqs = [(data["generated_text"], _checked_details(details, body))]
    others = details.get("best_of_sequences") or []
    if not isinstance(others, list):
        raise MalformedReply("`details.best_of_sequences` is not a list", body)
    for seq in others:
        if not isinstance(seq, dict) or not isinstance(seq.get("generated_text"), str):
            raise MalformedReply("a best_of sequence without a `generated_text` string", body)
        if not seq["generated_text"].strip() and not _generated(seq, body):
            raise MalformedReply("an empty best_of `generated_text` with no token counted", body)
        seqs.append((seq["generated_text"], _checked_details(seq, body)))
    return seqs


def parse_messages(body: str) -> tuple[str, dict[str, Any], int]:
    """(text, details in ``/generate``'s form, prompt tokens) of a Messages API reply, or
    :class:`MalformedReply`."""
    data = json_body(body)
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(choice, dict) or not isinstance(text, str):
        raise MalformedReply("no `choices[0].message.content` string", body)
    logprobs = choice.get("logprobs") or {}
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = [
        {"text": c.get("token", ""), "logprob": c.get("logprob")} if isinstance(c, dict) else c
        for c in content or []
    ]
    d = _checked_details({
        "finish_reason": choice.get("finish_reason"),
        "tokens": tokens,
        "generated_tokens": usage.get("completion_tokens", 0),
    }, body)
    if not text.strip() and not _generated(d, body):
        raise MalformedReply("an empty `message.content` with no generated token counted", body)
    return text, d, _int(usage.get("prompt_tokens"), body)


def _checked_details(d: dict[str, Any], body: str) -> dict[str, Any]:
    """``d`` when its tokens and counts have TGI's shape, else :class:`MalformedReply`."""
    tokens = d.get("tokens") or []
    if not isinstance(tokens, list) or not all(
        isinstance(t, dict) and isinstance(t.get("text", ""), str)
        and isinstance(t.get("logprob") or 0.0, (int, float)) for t in tokens
    ):
        raise MalformedReply("`tokens` of an unknown shape", body)
    _int(d.get("generated_tokens"), body)
    return d


def _generated(details: dict[str, Any], body: str) -> int:
    """How many tokens a sequence's details say were generated (0 when they say nothing)."""
    tokens = details.get("tokens")
    return max(_int(details.get("generated_tokens"), body), len(tokens) if isinstance(tokens, list) else 0)


def _int(value: Any, body: str) -> int:
    """A count from a reply (absent: 0), or :class:`MalformedReply`."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise MalformedReply(f"a token count that is not a number ({value!r})", body) from None


def create(options: Options, context: Any) -> TGIBackend | ReplicatedBackend:
    urls = replica_urls(options.url, f"{getattr(context, 'path', 'backend')}.options.url")
    if urls is not None:
        replicas = [_create(attrs.evolve(options, url=url), context) for url in urls]
        return ReplicatedBackend(replicas, [r.url for r in replicas], "url")
    return _create(options, context)


def _create(options: Options, context: Any) -> TGIBackend:
    seed = options.seed if options.seed is not None else int(getattr(context, "seed", 42))
    token = None
    if options.api_key_env:
        token = context.secret(options.api_key_env) if context is not None else None
        if not token:
            raise ConfigError(
                f"no token: set the environment variable {options.api_key_env}",
                "backend.options.api_key_env",
            )
    tokenizer = options.tokenizer or getattr(context, "model", None)
    return TGIBackend(options, tokenizer, seed, token)
