"""What the HTTP backends (``tgi``, ``openai``) share: per-sample seeds, client-side chat
templates, and keeping finished samples when a call fails part-way.

Keeping finished work: a backend call covers many requests (a stage chunk of 64 questions x K
samples). When the server keeps failing, the requests that did finish are attached to the
raised exception as ``partial_results`` (one list per prompt, ``None`` for each sample that did
not finish), and :class:`selflearn.core.generation.CachedBackend` stores them before the error
propagates, so the next run asks only for what is still missing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from ...core.errors import BackendError
from ...core.hashing import seed_from
from ...core.protocols import Prompt
from ...core.records import Completion

log = logging.getLogger("selflearn.backends")

#: servers take seeds as signed or unsigned 64-bit ints; 63 bits fit both
SEED_BITS = (1 << 63) - 1


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


class ChatRenderer:
    """Renders chat messages into one prompt string with a tokenizer's chat template.

    Used when a server only takes raw text (TGI's ``/generate``, the completions endpoint).
    The tokenizer is loaded on first use, so a fully cached run never loads it. Calls are
    serialised: request threads share it, and a fast tokenizer called from two threads at once
    can fail ("Already borrowed").
    """

    def __init__(self, tokenizer: str | None, chat_template: str | None, what: str) -> None:
        self.ref = tokenizer
        self.chat_template = chat_template
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
