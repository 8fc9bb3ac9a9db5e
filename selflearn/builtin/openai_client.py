"""A robust client for OpenAI-compatible servers, shared by the ``openai`` question generator,
inference backend and judge.

It wraps the official ``openai`` SDK (its own retries switched off) with what a long run
needs: retries with exponential backoff that honour ``Retry-After`` on 429 and 5xx, timeouts
and dropped connections; request and token rate limits; bounded concurrency; token accounting
with a cost estimate and a spend cap that stops cleanly; and errors that name the URL and
model but never the key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ..core.errors import AuthenticationError, BackendError, BudgetExceededError, ConfigError
from ..core.options import bounded, secret_name
from ..core.redact import safe_url
from .backends._remote import (
    MalformedReply,
    backoff_delay,
    bounded_map,
    excerpt,
    json_body,
    parse_retry_after,
    server_reason,
)

if TYPE_CHECKING:
    from ..core.context import ComponentContext

log = logging.getLogger("selflearn.openai")
T = TypeVar("T")
U = TypeVar("U")


@attrs.frozen
class ClientOptions:
    """Connection options of an OpenAI-compatible server (embedded in components' options)."""

    #: server URL; None means the official OpenAI API (or $OPENAI_BASE_URL)
    base_url: str | None = None
    #: model name as the server knows it
    model: str = "gpt-3.5-turbo-0125"
    #: name of the environment variable (or secret) holding the API key; local servers that
    #: need no key accept any value, and a missing key is only an error for api.openai.com
    api_key_env: str = secret_name("OPENAI_API_KEY")
    #: seconds before one request times out
    timeout: float = bounded(60.0, gt=0)
    #: attempts per request on 429 / 5xx / timeouts / dropped connections
    max_retries: int = bounded(6, ge=1)
    #: first backoff in seconds (doubles each attempt, with jitter; Retry-After wins)
    backoff: float = bounded(1.0, ge=0)
    #: longest single wait in seconds
    max_backoff: float = bounded(60.0, ge=0)
    #: requests in flight at once
    concurrency: int = bounded(8, ge=1)
    #: requests per minute (None: unlimited)
    requests_per_minute: int | None = bounded(None, ge=1)
    #: tokens per minute, prompt + completion estimate (None: unlimited)
    tokens_per_minute: int | None = bounded(None, ge=1)
    #: USD per million prompt tokens (for the cost estimate and the spend cap)
    price_input_per_mtok: float = bounded(0.0, ge=0)
    #: USD per million completion tokens
    price_output_per_mtok: float = bounded(0.0, ge=0)
    #: stop cleanly once the estimated spend reaches this many USD (None: no cap)
    max_cost_usd: float | None = bounded(None, ge=0)


@attrs.frozen
class Choice:
    text: str
    finish_reason: str
    logprobs: list[float] | None = None
    tokens: list[str] | None = None


@attrs.frozen
class ChatResult:
    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _RateLimiter:
    """Sliding one-minute windows for requests and tokens."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._req: deque[float] = deque()
        self._tok: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                while self._req and now - self._req[0] >= 60:
                    self._req.popleft()
                while self._tok and now - self._tok[0][0] >= 60:
                    self._tok.popleft()
                used = sum(t for _, t in self._tok)
                ok_r = not self.rpm or len(self._req) < self.rpm
                ok_t = not self.tpm or used + tokens <= self.tpm or not self._tok
                if ok_r and ok_t:
                    self._req.append(now)
                    self._tok.append((now, tokens))
                    return
                oldest = min([self._req[0]] if self._req else [now]) if not ok_r else now
                if not ok_t and self._tok:
                    oldest = min(oldest, self._tok[0][0])
                wait_s = max(0.01, 60 - (now - oldest))
            time.sleep(min(wait_s, 1.0))


class ChatClient:
    """Chat and text completions against one server and model, with retries and accounting."""

    def __init__(self, options: ClientOptions, secret: Callable[[str], str | None]) -> None:
        import openai

        self.options = options
        key = secret(options.api_key_env) if options.api_key_env else None
        official = options.base_url is None or "api.openai.com" in (options.base_url or "")
        if not key:
            if official:
                raise ConfigError(
                    f"no API key: set the environment variable {options.api_key_env} (or point "
                    "base_url at a local OpenAI-compatible server)",
                    "api_key_env",
                )
            key = "not-needed"
        #: values redacted from anything quoted from the server
        self._secrets: tuple[str, ...] = (key,)
        #: the server as errors, logs and identities show it (credentials in the URL redacted)
        self.url = safe_url(options.base_url or "https://api.openai.com/v1")
        self._client = openai.OpenAI(
            api_key=key, base_url=options.base_url, timeout=options.timeout, max_retries=0
        )
        self._limiter = _RateLimiter(options.requests_per_minute, options.tokens_per_minute)
        self._lock = threading.Lock()
        self.usage: dict[str, float] = {
            "requests": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        }

    # -- accounting ----------------------------------------------------------------------
    def _account(self, prompt_tokens: int, completion_tokens: int) -> None:
        o = self.options
        with self._lock:
            self.usage["requests"] += 1
            self.usage["prompt_tokens"] += prompt_tokens
            self.usage["completion_tokens"] += completion_tokens
            self.usage["cost_usd"] += (
                prompt_tokens * o.price_input_per_mtok + completion_tokens * o.price_output_per_mtok
            ) / 1e6

    def _check_budget(self) -> None:
        cap = self.options.max_cost_usd
        if cap is not None and self.usage["cost_usd"] >= cap:
            raise BudgetExceededError(
                f"spend cap reached: estimated ${self.usage['cost_usd']:.4f} >= max_cost_usd "
                f"${cap:.4f} for model {self.options.model!r} at {self.url}. Finished calls are "
                "cached; raise max_cost_usd and run the same command again to continue."
            )

    # -- calls ---------------------------------------------------------------------------
    def _with_retries(self, call: Callable[[], T], est_tokens: int, endpoint: str) -> T:
        """Run ``call`` (one request and the parsing of its reply) with the retry policy:
        429, 408, 5xx, timeouts, dropped connections and malformed 200 replies are retried
        with backoff (Retry-After wins); other 4xx and refused keys fail at once."""
        attempt = 0
        while True:
            self._check_budget()
            self._limiter.acquire(est_tokens)
            try:
                return call()
            except Exception as exc:  # classified below; anything unknown propagates
                what, delay = self._retryable(exc, endpoint)
                failure = exc
            attempt += 1
            if attempt >= self.options.max_retries:
                raise self._gave_up(failure, what, attempt, endpoint) from None
            if delay is None:
                delay = backoff_delay(attempt, self.options.backoff, self.options.max_backoff)
            with self._lock:
                self.usage["retries"] += 1
            log.warning(
                "%s%s: %s, retrying in %.1fs (attempt %d/%d)", self.url, endpoint, what,
                delay, attempt + 1, self.options.max_retries,
            )
            time.sleep(min(delay, self.options.max_backoff))

    def _retryable(self, exc: Exception, endpoint: str) -> tuple[str, float | None]:
        """(what failed, Retry-After seconds) of a failure worth retrying; any other failure
        is raised here as a clear :class:`BackendError` carrying the server's reason."""
        import openai

        o = self.options
        if isinstance(exc, MalformedReply):
            return f"malformed reply ({exc.what})", None
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            raise AuthenticationError(
                f"{self.url} refused the API key from {o.api_key_env} "
                f"(HTTP {exc.status_code}: {self._reason(exc)}); check the key and its access "
                f"to model {o.model!r}"
            ) from None
        if isinstance(exc, openai.NotFoundError):
            raise BackendError(
                f"{self.url} answered 404 for model {o.model!r} on {endpoint} "
                f"({self._reason(exc)}): wrong model name or URL (the base_url usually ends in /v1)"
            ) from None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status < 500 and status not in (408, 429):
                raise BackendError(
                    f"{self.url} rejected the request on {endpoint} for model {o.model!r} "
                    f"(HTTP {status}): {self._reason(exc)}. Fix the option the server names, or "
                    "leave it out for this server"
                ) from None
            return f"HTTP {status}", _retry_after(exc)
        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
            return type(exc).__name__, None
        raise exc

    def _gave_up(self, exc: Exception, what: str, attempts: int, endpoint: str) -> BackendError:
        """The error after the last attempt: a malformed reply is quoted (redacted)."""
        where = f"{self.url} (POST {endpoint}, model {self.options.model!r})"
        if isinstance(exc, MalformedReply):
            return BackendError(
                f"{where} answered {attempts} times with a reply that is not an OpenAI-style "
                f"{endpoint} response: {exc.what}; the last reply was "
                f"{excerpt(exc.body, secrets=self._secrets)}. Check that base_url points at an "
                "OpenAI-compatible server (it usually ends in /v1) and that no proxy answers in "
                "its place; nothing from these replies was stored, finished calls are cached"
            )
        return BackendError(
            f"{where} kept failing ({what}) after {attempts} attempts; finished calls are "
            "cached, run again to resume"
        )

    def _reason(self, exc: Any) -> str:
        """The reason text of a refused request's body, secrets redacted."""
        response = getattr(exc, "response", None)
        text = getattr(response, "text", None)
        if not isinstance(text, str):
            text = str(getattr(exc, "message", exc))
        return server_reason(text, self._secrets)

    def chat(
        self,
        messages: Sequence[dict[str, str]] | Sequence[Any],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        n: int = 1,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        logprobs: bool = False,
        extra_body: dict[str, Any] | None = None,
        require_text: bool = False,
    ) -> ChatResult:
        """One chat-completions request (``n`` choices). ``require_text``: an empty answer is
        a malformed reply (retried), for callers to whom an empty text is never an answer."""
        kwargs = self._request_kwargs(
            temperature, max_tokens, n, top_p, seed, stop, True if logprobs else None, extra_body
        )
        kwargs["messages"] = [dict(m) for m in messages]
        est = sum(len(str(m.get("content", ""))) for m in kwargs["messages"]) // 4 + max_tokens * n

        def call() -> ChatResult:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
            return parse_reply(raw.http_response.text, "chat", logprobs, require_text)

        return self._accounted(self._with_retries(call, est, "/chat/completions"))

    def complete(
        self,
        prompt: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        n: int = 1,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        logprobs: bool = False,
        extra_body: dict[str, Any] | None = None,
        require_text: bool = False,
    ) -> ChatResult:
        """One legacy completions request (raw text prompt, ``n`` choices)."""
        # the legacy endpoint's logprobs is the number of alternatives per token, not a flag
        kwargs = self._request_kwargs(
            temperature, max_tokens, n, top_p, seed, stop, 1 if logprobs else None, extra_body
        )
        kwargs["prompt"] = prompt
        est = len(prompt) // 4 + max_tokens * n

        def call() -> ChatResult:
            raw = self._client.completions.with_raw_response.create(**kwargs)
            return parse_reply(raw.http_response.text, "completions", logprobs, require_text)

        return self._accounted(self._with_retries(call, est, "/completions"))

    def _request_kwargs(
        self,
        temperature: float,
        max_tokens: int,
        n: int,
        top_p: float | None,
        seed: int | None,
        stop: Sequence[str] | None,
        logprobs: bool | int | None,
        extra_body: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The request fields both endpoints share; optional ones only when they do something
        (``logprobs`` is sent as given, in the endpoint's own form, when not None)."""
        kwargs: dict[str, Any] = {
            "model": self.options.model,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "n": n,
        }
        if top_p is not None and top_p < 1.0:
            kwargs["top_p"] = top_p
        if seed is not None:
            kwargs["seed"] = seed
        if stop:
            kwargs["stop"] = list(stop)
        if logprobs is not None:
            kwargs["logprobs"] = logprobs
        if extra_body:  # server-specific parameters (e.g. vLLM's repetition_penalty)
            kwargs["extra_body"] = dict(extra_body)
        return kwargs

    def _accounted(self, result: ChatResult) -> ChatResult:
        """Account a parsed reply's token usage."""
        self._account(result.prompt_tokens, result.completion_tokens)
        return result

    def map(self, fn: Callable[[T], U], items: Iterable[T]) -> list[U]:
        """Apply ``fn`` to every item with at most ``concurrency`` calls in flight.

        Results keep the items' order. The first error stops new work and is raised once the
        calls in flight have finished (their results are kept by ``fn``'s own caching).
        """
        return bounded_map(fn, items, self.options.concurrency)

    def close(self) -> None:
        self._client.close()


def parse_reply(text: str, endpoint: str, logprobs: bool, require_text: bool) -> ChatResult:
    """Parse a 200 reply of the ``chat`` or ``completions`` endpoint, checking its shape.

    Raises :class:`MalformedReply` (retried by the client) when the body is not JSON, has no
    ``choices`` list, a choice has no text (``message.content`` / ``text``), or an empty one
    that the usage does not back with a generated token (with ``require_text``: any empty
    one): a reply of another shape must never become an empty answer.
    """
    data = json_body(text)
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("no non-empty `choices` list", text)
    field = "message.content" if endpoint == "chat" else "text"
    parsed = []
    for c in choices:
        if not isinstance(c, dict):
            raise MalformedReply("a choice that is not an object", text)
        message = c.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if endpoint != "chat":
            content = c.get("text")
        if not isinstance(content, str):
            raise MalformedReply(f"a choice without a `{field}` string", text)
        if require_text and not content.strip():
            raise MalformedReply(f"an empty `{field}`", text)
        lp, toks = _logprobs(c.get("logprobs"), endpoint, text) if logprobs else (None, None)
        parsed.append(Choice(content, str(c.get("finish_reason") or "stop"), lp, toks))
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    completion_tokens = _count(usage.get("completion_tokens"))
    if completion_tokens == 0 and any(not c.text.strip() for c in parsed):
        # a model that ends at once still generated its end-of-sequence token
        raise MalformedReply(f"an empty `{field}` with no generated token counted", text)
    return ChatResult(parsed, _count(usage.get("prompt_tokens")), completion_tokens)


def _logprobs(lp: Any, endpoint: str, text: str) -> tuple[list[float] | None, list[str] | None]:
    """(log-probabilities, tokens) of one choice; (None, None) when the server sent none."""
    if not lp:
        return None, None
    try:
        if endpoint == "chat":
            content = lp.get("content") or []
            return [float(t["logprob"]) for t in content], [str(t["token"]) for t in content]
        values = [float(x) for x in (lp.get("token_logprobs") or []) if x is not None]
        return values, [str(t) for t in lp.get("tokens") or []]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise MalformedReply("log-probabilities of an unknown shape", text) from None


def _count(value: Any) -> int:
    """A token count from a usage block (0 when absent or not a number)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    return parse_retry_after(headers.get("retry-after"))


def make_client(options: ClientOptions, context: ComponentContext | None) -> ChatClient:
    """A :class:`ChatClient` whose key comes from the context's secret resolver."""
    import os

    resolver = context.secret if context is not None else (lambda n: os.environ.get(n))
    return ChatClient(options, resolver)
