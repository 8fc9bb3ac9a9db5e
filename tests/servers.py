"""Local HTTP servers on 127.0.0.1 for testing the HTTP clients (OpenAI-compatible, TGI).

``FakeServer`` runs a handler in a thread and injects faults on request: queue them with
``server.faults.append(...)``: ``("status", 429, {"Retry-After": "0"})`` answers that status,
``("sleep", 2.0)`` delays the answer, ``("drop",)`` closes the connection without answering,
``("raw", 200, b"<html>...", {"Content-Type": "text/html"})`` answers those exact bytes (a
non-JSON, wrong-shape or truncated body; the headers are optional, JSON's by default).
Every request is recorded in ``server.requests`` as ``(path, json_body, headers)`` (header names lower-cased).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[str, dict[str, Any]], tuple[int, Any, dict[str, str]]]


class FakeServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.faults: deque[tuple[Any, ...]] = deque()
        self._lock = threading.Lock()
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with outer._lock:
                    outer.requests.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
                    fault = outer.faults.popleft() if outer.faults else None
                if fault is not None:
                    if fault[0] == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if fault[0] == "sleep":
                        time.sleep(float(fault[1]))
                    elif fault[0] == "raw":
                        headers = fault[3] if len(fault) > 3 else {}
                        self._send_bytes(int(fault[1]), bytes(fault[2]), headers)
                        return
                    elif fault[0] == "status":
                        headers = fault[2] if len(fault) > 2 else {}
                        self._send(int(fault[1]), {"error": {"message": f"injected {fault[1]}"}}, headers)
                        return
                status, payload, headers = outer.handler(self.path, body)
                if isinstance(payload, bytes):  # a handler may answer raw bytes too
                    self._send_bytes(status, payload, headers)
                else:
                    self._send(status, payload, headers)

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), headers)

            def _send_bytes(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                headers = {"Content-Type": "application/json", **headers}
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_POST = _serve
            do_GET = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


Responder = Callable[[dict[str, Any], int], str]


def openai_handler(respond: Responder, *, model: str = "test-model") -> Handler:
    """An OpenAI-compatible handler for /v1/chat/completions and /v1/completions.

    ``respond(body, choice_index)`` returns the text of each of the ``n`` choices. A request
    for another model gets a 404 with OpenAI's error shape, a request without
    ``Authorization: Bearer`` is not checked (local servers rarely check).
    """

    def handle(path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if body.get("model") != model:
            return 404, {"error": {"message": f"model {body.get('model')!r} not found", "type": "invalid_request_error"}}, {}
        n = int(body.get("n") or 1)
        texts = [respond(body, i) for i in range(n)]
        max_tokens = int(body.get("max_tokens") or 16)
        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        for i, text in enumerate(texts):
            words = text.split()
            finish = "stop"
            if len(words) > max_tokens:
                words, finish = words[:max_tokens], "length"
                text = " ".join(words)
            completion_tokens += len(words)
            lp = None
            if path.endswith("/chat/completions"):
                if body.get("logprobs"):
                    lp = {"content": [{"token": w, "logprob": -0.5, "bytes": None, "top_logprobs": []} for w in words]}
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": lp})
            else:
                if body.get("logprobs"):
                    lp = {"tokens": words, "token_logprobs": [-0.5] * len(words), "top_logprobs": None, "text_offset": None}
                choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": lp})
        if path.endswith("/chat/completions"):
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            obj = "chat.completion"
        elif path.endswith("/completions"):
            prompt_tokens = len(str(body.get("prompt", "")).split())
            obj = "text_completion"
        else:
            return 404, {"error": {"message": f"no route {path}"}}, {}
        return 200, {
            "id": "cmpl-test",
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }, {}

    return handle
