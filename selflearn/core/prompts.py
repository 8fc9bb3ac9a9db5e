"""The prompts the model under training sees, shared by every stage that needs them.

One wording for the reading-comprehension prompt (passage + question) everywhere: the research
code used two different wordings for the few-shot turns and the final query (method.md, 16.8),
which we do not repeat.
"""

from __future__ import annotations

from .protocols import Message

RC_INSTRUCTION = (
    "Read the following text and answer the question after it factually, using the "
    "information in the text. Answer directly and briefly (one or two sentences), without "
    "mentioning the text."
)


def rc_messages(passage: str, question: str) -> list[Message]:
    """Chat messages asking ``question`` with ``passage`` in context (for y* and Y_c)."""
    content = f"{RC_INSTRUCTION}\n\nText:\n{passage.strip()}\n\nQuestion: {question.strip()}"
    return [{"role": "user", "content": content}]


def closed_book_messages(question: str) -> list[Message]:
    """Chat messages asking ``question`` alone (for Y_r, DPO prompts and evaluation)."""
    return [{"role": "user", "content": question.strip()}]
