"""Helpers of the backend tests: a TGI-protocol handler for :class:`tests.servers.FakeServer`,
a counting/failing backend wrapper and a minimal component context."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from selflearn.core.protocols import BackendCapabilities, GenerationParams
from selflearn.core.records import Completion

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def fake_text(inputs: str, seed: Any, n_words: int = 8) -> str:
    """Deterministic text for (prompt, seed): what a seeded server would sample."""
    digest = hashlib.sha256(f"{inputs}|{seed}".encode()).digest()
    return " ".join(WORDS[b % len(WORDS)] for b in digest[:n_words])


def tgi_handler(
    *,
    model_id: str = "tgi-model",
    max_best_of: int = 4,
    respond: Callable[[str, dict[str, Any], int], str] | None = None,
    stats: dict[str, Any] | None = None,
    delay: float = 0.0,
) -> Callable[[str, dict[str, Any]], tuple[int, Any, dict[str, str]]]:
    """A handler speaking TGI's HTTP API: ``GET /info``, ``POST /generate`` (with ``details``,
    ``best_of``, ``seed``, ``stop`` and TGI's validation errors) and the Messages API
    ``POST /v1/chat/completions``. ``respond(inputs, parameters, sequence_index)`` gives the
    text; by default a hash of the inputs and the seed (random when unseeded)."""
    counter = {"unseeded": 0}
    lock = threading.Lock()
    stats = stats if stats is not None else {}
    stats.setdefault("in_flight", 0)
    stats.setdefault("max_in_flight", 0)

    def text_for(inputs: str, params: dict[str, Any], i: int) -> str:
        if respond is not None:
            return respond(inputs, params, i)
        if not params.get("do_sample"):
            return fake_text(inputs, "greedy")
        seed = params.get("seed")
        if seed is None:
            with lock:
                counter["unseeded"] += 1
                seed = f"unseeded-{counter['unseeded']}"
        return fake_text(inputs, f"{seed}-{i}")

    def sequence(inputs: str, params: dict[str, Any], i: int) -> dict[str, Any]:
        words = text_for(inputs, params, i).split()
        max_new = int(params.get("max_new_tokens") or 20)
        finish = "eos_token"
        if len(words) > max_new:
            words, finish = words[:max_new], "length"
        pieces = [(" " if k else "") + w for k, w in enumerate(words)]
        for stop in params.get("stop") or []:
            acc = ""
            for k, piece in enumerate(pieces):
                acc += piece
                if stop in acc:  # TGI keeps the stop sequence in the text
                    pieces, finish = pieces[: k + 1], "stop_sequence"
                    break
        tokens = [{"id": k, "text": p, "logprob": -0.25 * (k + 1), "special": False} for k, p in enumerate(pieces)]
        if finish == "eos_token":
            tokens.append({"id": 2, "text": "</s>", "logprob": -0.01, "special": True})
        return {
            "generated_text": "".join(pieces),
            "finish_reason": finish,
            "generated_tokens": len(tokens),
            "seed": params.get("seed"),
            "prefill": [{"id": 0, "text": w, "logprob": None} for w in inputs.split()]
            if params.get("decoder_input_details") else [],
            "tokens": tokens,
        }

    def validate(params: dict[str, Any]) -> str | None:
        t = params.get("temperature")
        if t is not None and t <= 0:
            return "`temperature` must be strictly positive"
        p = params.get("top_p")
        if p is not None and not 0 < p < 1:
            return "`top_p` must be > 0.0 and < 1.0"
        best_of = params.get("best_of")
        if best_of is not None and best_of > 1:
            if not params.get("do_sample"):
                return "you must use sampling when `best_of` is > 1"
            if params.get("seed") is not None:
                return "`seed` must not be set when `best_of` > 1"
            if best_of > max_best_of:
                return f"`best_of` must be > 0 and <= {max_best_of}. Given: {best_of}"
        return None

    def handle(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if path == "/info":
            return 200, {"model_id": model_id, "model_sha": None, "max_best_of": max_best_of,
                         "max_input_tokens": 3500, "max_total_tokens": 4096, "version": "fake"}, {}
        with lock:
            stats["in_flight"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            if delay:
                time.sleep(delay)
            if path == "/generate":
                params = body.get("parameters") or {}
                error = validate(params)
                if error:
                    return 422, {"error": f"Input validation error: {error}", "error_type": "validation"}, {}
                inputs = str(body.get("inputs", ""))
                best_of = int(params.get("best_of") or 1)
                seqs = [sequence(inputs, params, i) for i in range(best_of)]
                main = seqs[0]
                details = {k: v for k, v in main.items() if k != "generated_text"}
                if params.get("details") and best_of > 1:
                    details["best_of_sequences"] = seqs[1:]
                out: dict[str, Any] = {"generated_text": main["generated_text"]}
                if params.get("details"):
                    out["details"] = details
                return 200, out, {}
            if path == "/v1/chat/completions":
                inputs = str(body.get("messages", [{}])[-1].get("content", ""))
                params = {"do_sample": (body.get("temperature") or 0) > 0, "seed": body.get("seed"),
                          "max_new_tokens": body.get("max_tokens"), "stop": body.get("stop")}
                seq = sequence(inputs, params, 0)
                lp = None
                if body.get("logprobs"):
                    lp = {"content": [{"token": t["text"], "logprob": t["logprob"]} for t in seq["tokens"]]}
                finish = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}[seq["finish_reason"]]
                return 200, {
                    "object": "chat.completion", "model": model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": seq["generated_text"]},
                                 "finish_reason": finish, "logprobs": lp}],
                    "usage": {"prompt_tokens": len(inputs.split()), "completion_tokens": len(seq["tokens"]),
                              "total_tokens": 0},
                }, {}
            return 404, {"error": f"no route {path}"}, {}
        finally:
            with lock:
                stats["in_flight"] -= 1

    return handle


def free_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FakeContext:
    """The bits of a ComponentContext a backend factory uses."""

    def __init__(self, model: str | None = None, seed: int = 42, secrets: dict[str, str] | None = None) -> None:
        self.model = model
        self.seed = seed
        self._secrets = secrets or {}

    def secret(self, name: str) -> str | None:
        return self._secrets.get(name)


class CountingBackend:
    """Wraps a backend: counts completions asked for, records calls, can fail after N calls
    (to simulate a run killed in the middle of a stage)."""

    def __init__(self, inner: Any, fail_after_calls: int | None = None) -> None:
        self.inner = inner
        self.capabilities: BackendCapabilities = inner.capabilities
        self.fail_after_calls = fail_after_calls
        self.calls: list[tuple[int, int, int]] = []  # (prompts, n, sample_offset)
        self.completions = 0

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def generate(self, prompts: Any, params: GenerationParams, *, n: int = 1, sample_offset: int = 0) -> list[list[Completion]]:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append((len(prompts), n, sample_offset))
        self.completions += len(prompts) * n
        return self.inner.generate(prompts, params, n=n, sample_offset=sample_offset)

    def close(self) -> None:
        self.inner.close()
