"""``sentences``: pack whole sentences into passages of at most ``max_tokens`` tokens.

The paper's chunker (method.md, section 3), without its loss of section tails:

* sentences come from the shared offline splitter :func:`selflearn.core.text.split_sentences`
  (every line break also ends a sentence); whitespace is normalised, line breaks between
  paragraphs are kept as single newlines;
* the document's **first sentence is a header** prefixed to every passage after the first
  (the first passage starts with it anyway); its tokens count toward the budget. A first
  sentence longer than ``max_header_fraction`` of the budget is not used as a prefix;
* sentences are packed greedily **across the whole article**: a passage ends only when the
  next sentence would not fit (or, with ``headings: split``, at a heading once the passage is
  at least ``min_tail_fraction`` full), so no section tail is ever dropped;
* a sentence longer than the budget is cut at word boundaries into pieces that fit
  (``long_sentences: split``, the default) or dropped (``drop``); both are counted in
  ``stats``, never silent;
* the final, partial passage is kept only if it has more than ``min_tail_fraction`` (3/4) of
  ``max_tokens`` tokens, except when it is the document's only passage
  (``keep_short_document``; the paper's documents always fill at least one passage);
* at most ``max_passages`` passages per document (the stage passes 8 for training
  documents, 2 for held-out ones).

Token counts are those of the target model's tokenizer (``tokenizer``, default the pipeline's
``model``), without special tokens; every passage's count is checked on its final text, so
the budget holds exactly, whatever the tokenizer does at sentence joins. With neither option
set, an approximate count is used and logged: one token per punctuation mark and per digit,
one per started 6 letters of a word (close to 32k-50k BPE vocabularies on English prose,
slightly above them on average).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import attrs

from ...core.errors import ConfigError
from ...core.options import bounded
from ...core.records import Document, Passage
from ...core.text import split_sentences

log = logging.getLogger("selflearn.chunking")

_TERMINAL = (".", "!", "?", ":", ";", "\u2026", '"', "'", ")", "]")


@attrs.frozen
class Options:
    #: most tokens per passage (header included)
    max_tokens: int = bounded(512, ge=1, le=1_000_000)
    #: model reference whose tokenizer counts tokens; None: the pipeline's model
    tokenizer: str | None = None
    #: prefix every passage with the document's first sentence
    prefix_first_sentence: bool = True
    #: the header is not used when it takes more than this fraction of the budget
    max_header_fraction: float = bounded(0.5, ge=0, le=1)
    #: the final partial passage is kept only above this fraction of max_tokens
    min_tail_fraction: float = bounded(0.75, ge=0, le=1)
    #: keep a document's only passage even when it is under the tail threshold
    keep_short_document: bool = True
    #: heading lines: keep (as text), drop, or split (start a new passage, dropped from text)
    headings: Literal["keep", "drop", "split"] = "keep"
    #: a non-first line with at most this many words and no final punctuation is a heading
    heading_max_words: int = bounded(10, ge=0)
    #: sentences longer than the budget: split at word boundaries, or drop (counted)
    long_sentences: Literal["split", "drop"] = "split"


class TokenCounter(Protocol):
    name: str

    def count(self, texts: Sequence[str]) -> list[int]: ...


class HFTokenCounter:
    """Counts with a transformers tokenizer, without special tokens, in one batch call."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]


_PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")


class ApproxTokenCounter:
    """The documented fallback estimate (see the module docstring)."""

    name = "approximate"

    def count(self, texts: Sequence[str]) -> list[int]:
        out = []
        for text in texts:
            n = 0
            for piece in _PIECE.findall(text):
                n += 1 + (len(piece) - 1) // 6 if piece[0].isalpha() else 1
            out.append(n)
        return out


@attrs.define
class _Unit:
    text: str
    line_start: bool  # first sentence of its line (joined with a newline, not a space)
    heading: bool = False
    n: int = 0


class SentenceChunker:
    """See the module docstring. ``stats`` accumulates over the documents chunked."""

    #: makes no model call: the dry-run may run it (in memory) to count exactly what follows
    dry_run_safe = True

    def __init__(self, options: Options, model: str | None, path: str = "chunker") -> None:
        if options.max_tokens < 8:
            raise ConfigError(f"expected at least 8, got {options.max_tokens}", f"{path}.options.max_tokens")
        for name in ("min_tail_fraction", "max_header_fraction"):
            value = getattr(options, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"expected a fraction in [0, 1], got {value}", f"{path}.options.{name}")
        self.options = options
        self.model = options.tokenizer or model
        self._counter: TokenCounter | None = None
        self.stats: Counter[str] = Counter()

    def identity(self) -> dict[str, Any]:
        return {"chunker": "sentences", **attrs.asdict(self.options), "tokenizer": self.model}

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            if self.model:
                from ...core.models import load_tokenizer

                self._counter = HFTokenCounter(load_tokenizer(self.model), self.model)
            else:
                log.info(
                    "sentences chunker: no tokenizer and no model configured; counting tokens "
                    "approximately (set chunker.options.tokenizer or model for exact counts)"
                )
                self._counter = ApproxTokenCounter()
        return self._counter

    # -- units -----------------------------------------------------------------------------
    def _units(self, text: str) -> list[_Unit]:
        o = self.options
        units: list[_Unit] = []
        for line in text.splitlines():
            line = " ".join(line.split())
            if not line:
                continue
            if (
                o.headings != "keep"
                and units
                and len(line.split()) <= o.heading_max_words
                and not line.endswith(_TERMINAL)
            ):
                self.stats["headings"] += 1
                if o.headings == "split":
                    units.append(_Unit(line, True, heading=True))
                continue
            for k, sentence in enumerate(split_sentences(line)):
                units.append(_Unit(" ".join(sentence.split()), k == 0))
        return units

    def _fit_words(self, unit: _Unit, budget: int) -> list[_Unit]:
        """Cut a too-long sentence at word boundaries into pieces of at most ``budget`` tokens."""
        words = unit.text.split()
        estimates = self.counter.count([" " + w for w in words])
        pieces: list[_Unit] = []
        i = 0
        while i < len(words):
            j, total = i, 0
            while j < len(words) and (j == i or total + estimates[j] <= budget):
                total += estimates[j]
                j += 1
            while True:  # check the real count of the piece, give back words until it fits
                text = " ".join(words[i:j])
                n = self.counter.count([text])[0]
                if n <= budget or j - i == 1:
                    break
                j -= 1
            if n <= budget:
                pieces.append(_Unit(text, unit.line_start and not pieces, n=n))
            else:
                self.stats["dropped_words"] += 1  # one "word" longer than the budget
            i = j
        return pieces

    def _fit(self, units: list[_Unit], budget: int) -> list[_Unit]:
        out: list[_Unit] = []
        for unit in units:
            if unit.heading or unit.n <= budget:
                out.append(unit)
            elif self.options.long_sentences == "drop":
                self.stats["dropped_long_sentences"] += 1
            else:
                self.stats["split_long_sentences"] += 1
                out.extend(self._fit_words(unit, budget))
        return out

    # -- packing ---------------------------------------------------------------------------
    @staticmethod
    def _render(header: _Unit | None, body: Sequence[_Unit], first: bool) -> str:
        parts: list[str] = []
        units = ([header] if header is not None else []) + list(body)
        for k, u in enumerate(units):
            if k:
                newline = u.line_start or (k == 1 and header is not None and not first)
                parts.append("\n" if newline else " ")
            parts.append(u.text)
        return "".join(parts)

    def chunk(self, document: Document, *, max_passages: int | None = None) -> list[Passage]:
        units = self._units(document.text)
        self.stats["documents"] += 1
        if not units:
            return []
        counts = self.counter.count([u.text for u in units])
        for u, n in zip(units, counts, strict=True):
            u.n = n
        header, units = self._split_header(units)
        passages, sizes = self._pack(header, units, max_passages)
        self.stats["passages"] += len(passages)
        return [
            Passage(
                id=f"{document.id}#p{k}",
                document_id=document.id,
                index=k,
                title=document.title,
                text=text,
                n_tokens=n,
                metadata={"prefixed": header is not None and k > 0},
            )
            for k, (text, n) in enumerate(zip(passages, sizes, strict=True))
        ]

    def _split_header(self, units: list[_Unit]) -> tuple[_Unit | None, list[_Unit]]:
        """``(header, body)``: the first sentence becomes the header prefixed to every passage
        (``prefix_first_sentence``), unless it is a heading or too large a share of the budget
        to leave room for the body (counted as ``header_too_long``)."""
        o = self.options
        if o.prefix_first_sentence and not units[0].heading:
            if units[0].n <= o.max_header_fraction * o.max_tokens:
                return units[0], units[1:]
            self.stats["header_too_long"] += 1
        return None, units

    def _pack(
        self, header: _Unit | None, units: list[_Unit], max_passages: int | None
    ) -> tuple[list[str], list[int]]:
        """Pack the body greedily into passages of at most ``max_tokens`` (header included):
        the texts and their exact token counts, the short final one already dropped.

        A heading at a passage start is skipped; a section shorter than ``min_tail_fraction``
        of the budget is merged forward past its closing heading instead of ending a passage;
        a piece that does not fit even alone with the header is cut tighter.
        """
        o = self.options
        L = o.max_tokens
        head = header.n + 2 if header is not None else 0  # a newline after the header, with margin
        body = self._fit(units, L - head)
        passages: list[str] = []
        sizes: list[int] = []
        i = 0
        reached_end = False  # the last passage took the document's last sentence
        while i < len(body) or (header is not None and not passages):
            if max_passages is not None and len(passages) >= max_passages:
                if i < len(body):
                    self.stats["capped_documents"] += 1
                break
            if i < len(body) and body[i].heading:
                i += 1  # a heading at a passage start: nothing to split
                continue
            j, total = self._estimate(body, i, head)
            if j < len(body) and body[j].heading and total < o.min_tail_fraction * L:
                body = body[:j] + body[j + 1 :]  # merge a short section forward, no fragment
                continue
            text, n, j = self._measure_fitting(header, body, i, j, first=not passages)
            if n > L:  # one piece plus the header is still too long: cut the piece tighter
                pieces = self._fit_words(body[i], max(1, body[i].n - (n - L)))
                body = body[:i] + pieces + body[i + 1 :]
                continue
            passages.append(text)
            sizes.append(n)
            reached_end = j >= len(body)
            i = j
        self._drop_short_tail(passages, sizes, reached_end)
        return passages, sizes

    def _estimate(self, body: list[_Unit], i: int, head: int) -> tuple[int, int]:
        """``(j, total)``: the passage ``body[i:j]`` a greedy estimate from per-unit counts
        allows (always one unit, then more while they fit; never past a heading), and its
        estimated size (``head`` plus each unit's count and a joining space). Exact counts come
        later, from :meth:`_measure_fitting`."""
        j, total = i, head
        while j < len(body) and not body[j].heading and (j == i or total + body[j].n + 1 <= self.options.max_tokens):
            total += body[j].n + 1
            j += 1
        return j, total

    def _measure_fitting(
        self, header: _Unit | None, body: list[_Unit], i: int, j: int, *, first: bool
    ) -> tuple[str, int, int]:
        """``(text, n, j)``: the passage ``body[i:j]`` rendered and counted exactly, giving
        sentences back while the estimate was short (tokenizers merge across sentence joins),
        down to a single unit, whose count may still exceed the budget."""
        text, n = self._measure(header, body, i, j, first=first)
        while n > self.options.max_tokens and j - i > 1:
            j -= 1
            text, n = self._measure(header, body, i, j, first=first)
        return text, n, j

    def _drop_short_tail(self, passages: list[str], sizes: list[int], reached_end: bool) -> None:
        """Drop the document's final passage when it is at most ``min_tail_fraction`` full,
        unless it is the only one and ``keep_short_document`` keeps it (the 3/4 tail rule)."""
        o = self.options
        short_tail = passages and reached_end and sizes[-1] <= o.min_tail_fraction * o.max_tokens
        if short_tail and not (o.keep_short_document and len(passages) == 1):
            passages.pop()
            sizes.pop()
            self.stats["dropped_tails"] += 1

    def _measure(
        self, header: _Unit | None, body: list[_Unit], i: int, j: int, *, first: bool
    ) -> tuple[str, int]:
        text = self._render(header, body[i:j], first)
        return text, self.counter.count([text])[0]


def create(options: Options, context: Any) -> SentenceChunker:
    return SentenceChunker(options, getattr(context, "model", None), getattr(context, "path", "chunker"))
