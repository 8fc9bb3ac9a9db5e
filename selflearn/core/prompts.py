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


#: The template the research code injected into base checkpoints without one (method.md 6.1):
#: ``<|user|>\n{q}</s>\n<|assistant|>\n{a}</s>\n``, with the tokenizer's own EOS token. The
#: trainers give it to base models at SFT time, and backends accept ``chat_template: zephyr`` so
#: the same base model is prompted the same way before it is trained.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

#: names accepted wherever a chat template is configured, besides a Jinja string
NAMED_TEMPLATES = {"zephyr": ZEPHYR_TEMPLATE}


def named_template(value: str | None) -> str | None:
    """A configured chat template: a known name (``zephyr``) resolved, a Jinja string as is."""
    if value is None:
        return None
    return NAMED_TEMPLATES.get(value, value)
