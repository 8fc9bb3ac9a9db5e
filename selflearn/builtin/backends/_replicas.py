"""Replicas of one model behind the HTTP backends: ``base_url`` (``openai``) or ``url``
(``tgi``) given as a list, e.g. one vLLM server per GPU.

:class:`ReplicatedBackend` holds one ordinary backend per URL. A call's prompts are spread
over the replicas that are up (prompt ``i`` to replica ``i mod R``), the sub-calls run at the
same time, and a sub-call that fails for good on its replica (after that backend's own retries:
429/5xx, timeouts, dropped connections, malformed replies) is run again on the next replica;
the failed replica is left out of later calls for ``cooldown`` seconds. Samples are seeded by
(seed, prompt, sample index), so which replica answered never changes a seeded result, and the
identity (the cache key) names the model, not the URLs: adding a replica keeps the cache.
The stage summary's ``backend_usage`` counts prompts, failures and time per replica.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...core.errors import BackendError
from ...core.protocols import GenerationParams, Prompt
from ...core.records import Completion

log = logging.getLogger("selflearn.backends")

#: seconds a replica that failed a call is left out of later calls
COOLDOWN_S = 30.0


class ReplicatedBackend:
    """One backend per replica URL, spread and failed over (see the module docstring)."""

    def __init__(self, replicas: Sequence[Any], names: Sequence[str], url_key: str,
                 cooldown: float = COOLDOWN_S) -> None:
        self.replicas = list(replicas)
        self.names = list(names)
        self.url_key = url_key
        self.cooldown = cooldown
        self.capabilities = self.replicas[0].capabilities
        self._down_until = [0.0] * len(self.replicas)
        self._counts = [{"prompts": 0, "failures": 0, "seconds": 0.0} for _ in self.replicas]
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        ident = dict(self.replicas[0].identity())
        ident[self.url_key] = "replicas"  # the same model on every replica: URLs are not the key
        return ident

    def usage(self) -> dict[str, Any]:
        """Per replica: prompts answered, failed sub-calls, busy seconds, and its own usage."""
        out: dict[str, Any] = {}
        for name, backend, counts in zip(self.names, self.replicas, self._counts, strict=True):
            row: dict[str, Any] = {**counts, "seconds": round(counts["seconds"], 3)}
            inner = getattr(backend, "usage", None)
            if callable(inner):
                row["usage"] = inner()
            out[name] = row
        return {"replicas": out}

    def _up(self) -> list[int]:
        now = time.monotonic()
        up = [r for r in range(len(self.replicas)) if self._down_until[r] <= now]
        return up or list(range(len(self.replicas)))  # all down: try them all again

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        if not prompts:
            return []
        up = self._up()
        groups: dict[int, list[int]] = {}
        for i in range(len(prompts)):
            groups.setdefault(up[i % len(up)], []).append(i)
        out: list[list[Completion]] = [[] for _ in prompts]

        def run(item: tuple[int, list[int]]) -> None:
            first, indices = item
            batch = [prompts[i] for i in indices]
            call: Callable[[Any], list[list[Completion]]] = lambda b: b.generate(  # noqa: E731
                batch, params, n=n, sample_offset=sample_offset)
            for i, rows in zip(indices, self._failover(first, call, len(batch)), strict=True):
                out[i] = rows

        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            list(pool.map(run, groups.items()))
        return out

    def _failover(self, first: int, call: Callable[[Any], list[list[Completion]]],
                  size: int) -> list[list[Completion]]:
        """``call`` on replica ``first``, then on each other replica in turn until one answers."""
        tried: list[int] = []
        errors: list[str] = []
        r: int | None = first
        while r is not None:
            tried.append(r)
            t0 = time.perf_counter()
            try:
                rows = call(self.replicas[r])
            except BackendError as exc:
                with self._lock:
                    self._counts[r]["failures"] += 1
                    self._down_until[r] = time.monotonic() + self.cooldown
                errors.append(f"{self.names[r]}: {exc}")
                log.warning("replica %s failed (%s); its %d prompt(s) go to another replica",
                            self.names[r], type(exc).__name__, size)
                r = self._next(tried)
                continue
            with self._lock:
                self._counts[r]["prompts"] += size
                self._counts[r]["seconds"] += time.perf_counter() - t0
            return rows
        raise BackendError(
            f"every replica failed ({len(tried)}): " + " | ".join(errors)
            + ". Check that the servers are up and serve the configured model"
        )

    def _next(self, tried: list[int]) -> int | None:
        """The next replica to try: one that is up now (others may have failed meanwhile),
        else any not yet tried, else None."""
        left = [r for r in range(len(self.replicas)) if r not in tried]
        up = set(self._up())
        return next((r for r in left if r in up), left[0] if left else None)

    def close(self) -> None:
        for backend in self.replicas:
            backend.close()


def replica_urls(value: str | list[str] | None, path: str) -> list[str] | None:
    """The URLs of a list-valued URL option (None when it is a single URL or unset)."""
    if not isinstance(value, list):
        return None
    from ...core.errors import ConfigError

    if not value or not all(isinstance(u, str) and u for u in value):
        raise ConfigError(f"expected one URL or a non-empty list of URLs, got {value!r}", path)
    if len(set(value)) != len(value):
        raise ConfigError(f"the replica list names a URL twice: {value!r}", path)
    return list(value)
