"""``lexical``: a model-free disagreement score from token overlap, for tests and sanity checks.

For each sample, the score is ``1 - |ref ∩ sample| / |ref|`` over lower-cased word sets
(the share of the reference's words the sample does not contain); the item score is the mean
over samples. It knows nothing of meaning: use it to test pipelines, not to train models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from ...core.protocols import ScoreItem, ScoreResult

_WORD = re.compile(r"\w+")


@attrs.frozen
class Options:
    lowercase: bool = True


def _words(text: str, lowercase: bool) -> set[str]:
    return set(_WORD.findall(text.lower() if lowercase else text))


class LexicalScorer:
    def __init__(self, options: Options) -> None:
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"scorer": "lexical", "lowercase": self.options.lowercase}

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        results = []
        for item in items:
            ref = _words(item.reference, self.options.lowercase)
            per: list[float | None] = []
            for sample in item.samples:
                words = _words(sample, self.options.lowercase)
                per.append(None if not ref or not words else 1.0 - len(ref & words) / len(ref))
            valid = [s for s in per if s is not None]
            results.append(ScoreResult(sum(valid) / len(valid) if valid else None, per))
        return results


def create(options: Options, context: Any) -> LexicalScorer:
    return LexicalScorer(options)
