"""``template``: deterministic questions with no model, for tests and dry runs.

Each question names the passage's title and one salient phrase of the passage (a capitalised
word run or a number, in order of appearance), e.g. "What is known about Mont Blanc and 1786?".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from ...core.hashing import content_hash
from ...core.records import Passage, Question

_PHRASE = re.compile(r"\b(?:[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*|\d{3,4})\b")


@attrs.frozen
class Options:
    template: str = "What is known about {title} and {phrase}?"


class TemplateQuestions:
    #: makes no model call: the dry-run may run it (in memory) to count exactly what follows
    dry_run_safe = True

    def __init__(self, options: Options) -> None:
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"generator": "template", "template": self.options.template}

    def generate(
        self, passages: Sequence[Passage], *, per_passage: int = 1, split: str = "train"
    ) -> list[Question]:
        out: list[Question] = []
        seen: set[tuple[str, str]] = set()
        for passage in passages:
            title_words = set(passage.title.lower().split())
            phrases = []
            for match in _PHRASE.finditer(passage.text):
                phrase = match.group(0)
                if phrase.lower() in title_words or phrase.lower() == passage.title.lower():
                    continue
                if (passage.document_id, phrase) in seen or phrase in phrases:
                    continue
                phrases.append(phrase)
            for phrase in phrases[:per_passage]:
                seen.add((passage.document_id, phrase))
                text = self.options.template.format(title=passage.title, phrase=phrase)
                out.append(
                    Question(
                        id=content_hash([passage.id, text], 16),
                        passage_id=passage.id,
                        document_id=passage.document_id,
                        text=text,
                        split=split,
                        provenance={"generator": self.identity()},
                    )
                )
        return out


def create(options: Options, context: Any) -> TemplateQuestions:
    return TemplateQuestions(options)
