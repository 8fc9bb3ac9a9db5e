"""What the HTTP backends (``tgi``, ``openai``) share: per-sample seeds, client-side chat
templates, retry backoff, bounded concurrency, and keeping finished samples when a call fails
part-way (:func:`gather_samples`). The retry and concurrency helpers also serve
:mod:`selflearn.builtin.openai_client`, so both clients back off and fail alike.

Keeping finished work: a backend call covers many requests (a stage chunk of 64 questions x K
samples). When the server keeps failing, the requests that did finish are attached to the
raised exception as ``partial_results`` (one list per prompt, ``None`` for each sample that did
not finish), and :class:`selflearn.core.generation.CachedBackend` stores them before the error
propagates, so the next run asks only for what is still missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from ...core.errors import BackendError
from ...core.hashing import seed_from
from ...core.prompts import named_template
from ...core.protocols import Prompt
from ...core.records import Completion
from ...core.redact import redact

log = logging.getLogger("selflearn.backends")

#: servers take seeds as signed or unsigned 64-bit ints; 63 bits fit both
SEED_BITS = (1 << 63) - 1

T = TypeVar("T")
U = TypeVar("U")
#: one request of a backend call: (prompt index, first sample index, samples it returns)
Job = tuple[int, int, int]


def prompt_key(prompt: Prompt) -> Any:
    """A JSON-able form of a prompt (the same one the generation cache uses)."""
    return prompt if isinstance(prompt, str) else [dict(m) for m in prompt]


def sample_seed(seed: int, prompt: Prompt, index: int) -> int:
    """The server-side seed of sample ``index`` of ``prompt``: a function of nothing else, so
    samples 5..9 requested alone equal those of a K=10 call (when the server honours seeds)."""
    return seed_from("sample", seed, prompt_key(prompt), index) & SEED_BITS


def attach_partial(exc: BaseException, partial: list[list[Completion | None]]) -> BaseException:
    """Attach the finished samples of a failed call to its exception (see module docstring)."""
    if any(c is not None for row in partial for c in row):
        exc.partial_results = partial  # type: ignore[attr-defined]
    return exc


def gather_samples(
    n_prompts: int,
    n: int,
    greedy: bool,
    jobs: list[Job],
    request: Callable[[int, int, int], list[Completion]],
    concurrency: int,
) -> list[list[Completion]]:
    """Run the ``jobs`` of one backend call (``request(prompt index, first sample, count)``
    returns at least ``count`` completions, the first ``count`` are kept) with at most
    ``concurrency`` in flight, and assemble ``n`` samples per prompt.

    A greedy call makes one request per prompt and repeats its answer ``n`` times. When a
    request fails, the samples that did finish ride on the exception (:func:`attach_partial`).
    """
    per_prompt = 1 if greedy else n
    results: list[list[Completion | None]] = [[None] * per_prompt for _ in range(n_prompts)]

    def run(job: Job) -> None:
        pi, j, count = job
        comps = request(pi, j, count)
        for k in range(count):
            results[pi][j + k] = comps[k]

    try:
        bounded_map(run, jobs, concurrency)
    except Exception as exc:
        attach_partial(exc, [row * n if greedy else row for row in results])
        raise
    out = [[c for c in row if c is not None] for row in results]
    return [row * n for row in out] if greedy else out


def bounded_map(fn: Callable[[T], U], items: Iterable[T], concurrency: int) -> list[U]:
    """Apply ``fn`` to every item with at most ``concurrency`` calls in flight.

    Results keep the items' order. The first error (in the items' order) stops new work and is
    raised once the calls in flight have finished, so their results are not lost to a cache
    that ``fn`` writes.
    """
    items = list(items)
    if concurrency <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(fn, x) for x in items]
        _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()  # type: ignore[misc]
        return [f.result() for f in futures]


class MalformedReply(BackendError):
    """A server answered 200 with a body that is not what its protocol promises: not JSON, JSON
    of another shape, a required field missing, or empty text where text is required.

    The clients treat it like a failed call (a proxy's error page, a half-started server or a
    server of another kind answers this way): retried with the retry policy, then turned into a
    clear error naming the server, the endpoint and an excerpt of what was received. Nothing
    parsed from such a body is ever returned, so no empty answer reaches a cache.
    """

    def __init__(self, what: str, body: str) -> None:
        self.what = what
        self.body = body
        super().__init__(f"{what}; received {excerpt(body)}")


def excerpt(text: str, limit: int = 160, secrets: Sequence[str] = ()) -> str:
    """A short one-line quote of a server's body for an error message (secrets redacted)."""
    flat = " ".join(redact(str(text), secrets).split())
    if not flat:
        return "an empty body"
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))


def json_body(text: str) -> Any:
    """The JSON value of a 200 reply's body, or :class:`MalformedReply`."""
    try:
        return json.loads(text)
    except ValueError:
        raise MalformedReply("the body is not JSON", text) from None


def server_reason(text: str, secrets: Sequence[str] = ()) -> str:
    """The reason a server gives in an error body, in one line, secrets redacted.

    Understands OpenAI's ``{"error": {"message": ...}}``, TGI's ``{"error": "..."}``, FastAPI /
    pydantic's ``{"detail": [{"loc": [...], "msg": ...}]}`` (vLLM, ``transformers serve``) and
    plain text, so a 422 says which field was refused instead of only its status code.
    """
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    reason = _reason_of(body)
    flat = " ".join(redact(reason, secrets).split())
    return (flat[:300] + ("..." if len(flat) > 300 else "")) or "(no reason given in the body)"


def _reason_of(body: Any) -> str:
    """The human part of a parsed error body (see :func:`server_reason`)."""
    if isinstance(body, dict):
        if "loc" in body and "msg" in body:  # one pydantic validation error
            return f"{'.'.join(str(x) for x in body['loc'] or [])}: {body['msg']}"
        for key in ("error", "detail", "message", "msg"):
            if key in body and body[key]:
                return _reason_of(body[key])
        return json.dumps(body)
    if isinstance(body, list):
        return "; ".join(_reason_of(x) for x in body[:5])
    return str(body)


def backoff_delay(attempt: int, backoff: float, max_backoff: float) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): exponential from ``backoff``, capped
    at ``max_backoff``, with jitter (x0.5..1) so parallel requests do not retry in lockstep."""
    return min(max_backoff, backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (None when absent or not a number of seconds)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class ChatRenderer:
    """Renders chat messages into one prompt string with a tokenizer's chat template.

    Used when a server only takes raw text (TGI's ``/generate``, the completions endpoint).
    The tokenizer is loaded on first use, so a fully cached run never loads it. Calls are
    serialised: request threads share it, and a fast tokenizer called from two threads at once
    can fail ("Already borrowed").
    """

    def __init__(self, tokenizer: str | None, chat_template: str | None, what: str) -> None:
        self.ref = tokenizer
        self.chat_template = named_template(chat_template)  # "zephyr" or a Jinja string
        self.what = what
        self._tok: Any = None
        self._lock = threading.RLock()

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"tokenizer": self.ref}
        if self.chat_template:
            ident["chat_template"] = hashlib.sha256(self.chat_template.encode()).hexdigest()[:16]
        return ident

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            return self._load()

    def _load(self) -> Any:
        if self._tok is None:
            if not self.ref:
                raise BackendError(
                    f"{self.what}: chat prompts need a tokenizer with a chat template to render "
                    "them for the server; set the backend's `tokenizer` option (a hub id, folder "
                    "or .gguf file) or the run's top-level `model`"
                )
            from ...core.models import load_tokenizer

            self._tok = load_tokenizer(self.ref)
        return self._tok

    def render(self, messages: Sequence[Any]) -> str:
        with self._lock:
            return self._render(messages)

    def _render(self, messages: Sequence[Any]) -> str:
        tok = self._load()
        template = self.chat_template or getattr(tok, "chat_template", None)
        if not template:
            raise BackendError(
                f"{self.what}: the tokenizer {self.ref!r} has no chat template; set the "
                "backend's `chat_template` option to a Jinja template"
            )
        text = tok.apply_chat_template(
            [dict(m) for m in messages], chat_template=template,
            add_generation_prompt=True, tokenize=False,
        )
        return str(text)

    def count(self, text: str) -> int:
        """Prompt tokens (when the tokenizer is loaded anyway; else 0)."""
        with self._lock:
            if self._tok is None:
                return 0
            return len(self._tok(text, add_special_tokens=False)["input_ids"])


def cut_at_stop(
    text: str, stops: Sequence[str], pieces: list[str] | None
) -> tuple[str, bool, int | None]:
    """Cut ``text`` before the first stop string.

    Returns (text, whether a stop string was found, how many of the token ``pieces`` to keep:
    the fewest whose concatenation contains the stop string; None when no pieces were given).
    """
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not hits:
        return text, False, None if pieces is None else len(pieces)
    cut = min(hits)
    keep = None
    if pieces is not None:
        acc = ""
        keep = len(pieces)
        for k, piece in enumerate(pieces, 1):
            acc += piece
            if any(s and s in acc for s in stops):
                keep = k
                break
    return text[:cut], True, keep
