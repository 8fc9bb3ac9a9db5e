"""(premise, hypothesis) pairs tokenised as the tokenizer's own pair call does, each text once.

Why: ``tokenizer(premises, hypotheses, truncation=True, max_length=L)`` tokenises both texts of
every pair in full and turns every token into Python lists through transformers' wrapper. The
NLI scorers pair each reference sentence with every sample, so each sample is tokenised once per
sentence and each sentence once per sample; on long texts the tokenizer, not the model, then
bounds the scores stage (``benchmarks/nli_tokenize.py``; docs/performance.md, run 21).

:class:`PairEncoder` encodes each distinct text once with the tokenizer's own backend (the Rust
``tokenizers.Tokenizer`` object of the wrapper itself: a copy rebuilt from its JSON can break
unigram ties differently) and builds each pair as the backend does: both texts truncated
``longest_first`` to ``L`` minus the template's special tokens (see :func:`longest_first`), then
the post-processor's template, read from the backend itself (special tokens, token type ids).
The engine compares the first pairs with the tokenizer's own call and keeps that call for good
when they differ; a pair with an empty text always takes it (the wrapper then encodes one
sequence, not a pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

#: ids and token types of one encoded pair list
Encoded = tuple[list[list[int]], list[list[int]] | None]


@attrs.frozen
class Template:
    """A post-processor's pair layout: the special ids (and their token types) before the first
    text, between the texts and after the second, and each text's token type."""

    pre: list[int]
    mid: list[int]
    post: list[int]
    pre_types: list[int]
    mid_types: list[int]
    post_types: list[int]
    first_type: int
    second_type: int

    @property
    def specials(self) -> int:
        return len(self.pre) + len(self.mid) + len(self.post)


def longest_first(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """The tokens kept of two texts of ``n1`` and ``n2`` tokens within ``budget``, as the
    ``longest_first`` strategy keeps them: nothing is cut if both fit; else the shorter text
    keeps at most half the budget (rounded down) and the longer one the rest (equal lengths:
    the second is the longer)."""
    if n1 + n2 <= budget:
        return n1, n2
    if n1 > n2:
        kept = min(n2, budget // 2)
        return budget - kept, kept
    kept = min(n1, budget // 2)
    return kept, budget - kept


class PairEncoder:
    """See the module docstring. Build it with :meth:`of`; None means "use the tokenizer"."""

    def __init__(self, backend: Any, max_length: int, template: Template) -> None:
        self.backend = backend
        self.template = template
        self.budget = max_length - template.specials

    @classmethod
    def of(cls, tokenizer: Any, max_length: int) -> PairEncoder | None:
        """The encoder for a transformers tokenizer, or None when it has no Rust backend or a
        pair template this does not describe (the caller keeps the tokenizer's own call)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "post_process"):
            return None
        try:
            template = _template(backend)
        except Exception:  # noqa: BLE001  (any backend quirk: the tokenizer's own call is always right)
            return None
        if template is None:
            return None
        encoder = cls(backend, max_length, template)
        return encoder if encoder.budget > 0 else None

    def encode(self, pairs: Sequence[tuple[str, str]], with_types: bool) -> Encoded:
        """Input ids (and token types when ``with_types``) of every pair, aligned with ``pairs``."""
        self.backend.no_truncation()
        self.backend.no_padding()
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        encoded = self.backend.encode_batch(texts, add_special_tokens=False)
        ids_of = {t: e.ids for t, e in zip(texts, encoded, strict=True)}
        tp = self.template
        ids: list[list[int]] = []
        types: list[list[int]] = []
        for premise, hypothesis in pairs:
            a, b = ids_of[premise], ids_of[hypothesis]
            n1, n2 = longest_first(len(a), len(b), self.budget)
            ids.append([*tp.pre, *a[:n1], *tp.mid, *b[:n2], *tp.post])
            if with_types:
                types.append([*tp.pre_types, *[tp.first_type] * n1, *tp.mid_types, *[tp.second_type] * n2,
                              *tp.post_types])
        return ids, (types if with_types else None)


def _template(backend: Any) -> Template | None:
    """The pair template of ``backend``'s post-processor; None unless the layout is specials,
    first text, specials, second text, specials, with one token type per text."""
    backend.no_truncation()
    backend.no_padding()
    first = backend.encode("premise text", add_special_tokens=False)
    second = backend.encode("hypothesis text", add_special_tokens=False)
    if not first.ids or not second.ids:
        return None
    pair = backend.post_process(first, second, add_special_tokens=True)
    # the texts' tokens are those the special-tokens mask leaves: the first text's run, then
    # the second's (standalone encodings carry no sequence ids to tell them apart)
    texts = [i for i, special in enumerate(pair.special_tokens_mask) if not special]
    in_first, in_second = texts[: len(first.ids)], texts[len(first.ids) :]
    if [pair.ids[i] for i in in_first] != first.ids or [pair.ids[i] for i in in_second] != second.ids:
        return None
    a0, a1, b0, b1 = in_first[0], in_first[-1], in_second[0], in_second[-1]
    if a1 - a0 + 1 != len(in_first) or b1 - b0 + 1 != len(in_second):
        return None
    first_types, second_types = {pair.type_ids[i] for i in in_first}, {pair.type_ids[i] for i in in_second}
    if len(first_types) != 1 or len(second_types) != 1:
        return None
    return Template(
        pre=pair.ids[:a0], mid=pair.ids[a1 + 1 : b0], post=pair.ids[b1 + 1 :],
        pre_types=pair.type_ids[:a0], mid_types=pair.type_ids[a1 + 1 : b0], post_types=pair.type_ids[b1 + 1 :],
        first_type=first_types.pop(), second_type=second_types.pop(),
    )
