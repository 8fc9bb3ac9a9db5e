"""Local OpenAI-compatible servers that behave like the real ones selflearn is run against.

Each kind wraps :func:`tests.servers.openai_handler` with what that server does to a chat
completions request (docs/servers.md cites the sources):

* ``vllm``, ``sglang``: honour ``n``, ``seed``, ``temperature``, ``top_p`` and ``logprobs``, and
  accept ``repetition_penalty`` as an extra top-level field;
* ``llama.cpp``: rejects ``n`` > 1 ("Only one completion choice is allowed"), honours ``seed``
  and ``logprobs``, ignores ``repetition_penalty`` (its own field is ``repeat_penalty``);
* ``transformers-serve``: ignores ``n`` (one choice), ``logprobs`` and ``top_logprobs``; rejects
  fields outside its schema with a 422 (``repetition_penalty``); samples only when the model's
  generation config sets ``do_sample`` (``do_sample=False``: every answer is greedy).

The text of a choice is a function of (prompt, seed, choice index) when the server samples, and
of the prompt alone when it decodes greedily, as a real model's would be.
"""

from __future__ import annotations

from typing import Any

from tests.backends.helpers import fake_text
from tests.servers import Handler, openai_handler

KINDS = ("vllm", "sglang", "llama.cpp", "transformers-serve")


def _prompt(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def respond(body: dict[str, Any], i: int) -> str:
    """Greedy text for temperature 0 (or none), else seeded text per choice."""
    prompt = _prompt(body)
    if not body.get("temperature"):
        return fake_text(prompt, "greedy")
    return fake_text(prompt, f"{body.get('seed')}-{i}")


def server_kind(kind: str, *, do_sample: bool = True, model: str = "test-model") -> Handler:
    """A handler for ``FakeServer`` that behaves like ``kind`` (see the module docstring)."""
    inner = openai_handler(respond, model=model)

    def handle(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        body = dict(body)
        if kind == "llama.cpp":
            if int(body.get("n") or 1) != 1:
                return 500, {"error": {"code": 500, "message": "Only one completion choice is allowed",
                                       "type": "server_error"}}, {}
            body.pop("repetition_penalty", None)
        elif kind == "transformers-serve":
            if "repetition_penalty" in body:
                return 422, {"detail": "Unexpected fields in the request: {'repetition_penalty'}"}, {}
            for ignored in ("n", "logprobs", "top_logprobs"):
                body.pop(ignored, None)
            if not do_sample:
                body.pop("temperature", None)
        return inner(path, body)

    return handle
