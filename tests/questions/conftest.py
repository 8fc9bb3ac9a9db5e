"""Fixtures of the question-generation tests: a tiny corpus and scripted model replies."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from selflearn.core.hashing import content_hash
from selflearn.core.records import Document

TOPIC = re.compile(r"^Topic: (.+)$", re.M)


class ListSource:
    """A knowledge source given as a Python object (no registration needed)."""

    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs

    def identity(self) -> dict[str, Any]:
        return {"docs": content_hash([d.to_dict() for d in self.docs])}

    def documents(self) -> list[Document]:
        return list(self.docs)


def _doc(title: str, split: str, n: int) -> Document:
    sentences = [f"{title} has property number {k} which is described in detail here." for k in range(n)]
    return Document(f"doc:{title}", title, " ".join(sentences), {"split": split, "category": "test"})


@pytest.fixture()
def corpus() -> ListSource:
    """Three training documents and one test document; with max_tokens 40 and the approximate
    token count, each gives two or three passages."""
    return ListSource([_doc("Alpha", "train", 6), _doc("Beta", "train", 6),
                       _doc("Gamma", "train", 6), _doc("Delta", "test", 6)])


def last_user(messages: list[dict[str, str]]) -> str:
    return [m["content"] for m in messages if m["role"] == "user"][-1]


def passage_of(messages: list[dict[str, str]]) -> str:
    content = last_user(messages)
    return content.split("Reference passage:\n", 1)[1].split("\n\nWrite one", 1)[0]


def topic_of(messages: list[dict[str, str]]) -> str:
    match = TOPIC.search(last_user(messages))
    assert match, "the user turn names the topic"
    return match.group(1)


class Script:
    """Replies per passage: ``plan(topic, passage_tag, call_number)`` -> text. Thread-safe."""

    def __init__(self, plan: Callable[[str, str, int], str]) -> None:
        self.plan = plan
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any], i: int) -> str:
        messages = body["messages"]
        passage = passage_of(messages)
        tag = content_hash(passage, 6)
        with self._lock:
            k = self.calls[passage]
            self.calls[passage] += 1
        return self.plan(topic_of(messages), tag, k)


def good(topic: str, tag: str, k: int) -> str:
    return f"What is special about {topic} in part {tag}?"
