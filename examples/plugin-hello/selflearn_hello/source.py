"""The ``faq`` knowledge source."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import attrs
import yaml

from selflearn import Document


@attrs.frozen
class Options:
    #: folder holding the FAQ files
    folder: str
    #: documents with these file stems are held out for evaluation
    test_files: list[str] = attrs.field(factory=list)


class FaqSource:
    def __init__(self, options: Options) -> None:
        self.options = options

    def documents(self) -> Iterator[Document]:
        for name in sorted(os.listdir(self.options.folder)):
            stem, ext = os.path.splitext(name)
            if ext not in (".yaml", ".yml"):
                continue
            with open(os.path.join(self.options.folder, name), encoding="utf-8") as f:
                entries = yaml.safe_load(f) or []
            text = "\n\n".join(f"{e['question']} {e['answer']}" for e in entries)
            yield Document(
                id=f"faq:{stem}",
                title=stem.replace("-", " ").title(),
                text=text,
                metadata={
                    "category": "faq",
                    "split": "test" if stem in self.options.test_files else "train",
                },
            )


def create(options: Options, context: Any) -> FaqSource:
    return FaqSource(options)
