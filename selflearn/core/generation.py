"""A caching wrapper around any inference backend.

Keys are (backend identity, prompt, parameters, sample index), so a re-run makes no calls and
raising K from 5 to 10 asks the backend only for samples 5..9 of each prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cache import JsonlCache
from .protocols import BackendCapabilities, GenerationParams, InferenceBackend, MixedBackend, Prompt
from .records import Completion


def _prompt_key(prompt: Prompt) -> Any:
    return prompt if isinstance(prompt, str) else [dict(m) for m in prompt]


def _lacks_logprobs(hit: dict[str, Any]) -> bool:
    """A cached answer with text but without the log-probabilities its key asked for."""
    return not hit.get("logprobs") and bool(str(hit.get("text") or "").strip()) and hit.get(
        "completion_tokens"
    ) != 0


def completion_key(identity: Any, prompt: Prompt, params: GenerationParams, index: int) -> str:
    """The cache key of sample ``index`` of ``prompt`` from the backend with ``identity``."""
    return JsonlCache.key(identity, _prompt_key(prompt), params.to_dict(), index)


def cached_completions(
    cache: JsonlCache, identity: Any, prompt: Prompt, params: GenerationParams, n: int
) -> list[Completion] | None:
    """Samples 0..n-1 of ``prompt`` if all are in ``cache`` (else None): a stage uses it to
    send only uncached work to its engine's workers."""
    out = []
    for index in range(n):
        hit = cache.get(completion_key(identity, prompt, params, index))
        if hit is None or (params.logprobs and _lacks_logprobs(hit)):
            return None
        out.append(Completion.from_dict(hit))
    return out


class CachedBackend:
    """An :class:`InferenceBackend` that answers from a :class:`JsonlCache` when it can."""

    def __init__(self, backend: InferenceBackend, cache: JsonlCache) -> None:
        self.backend = backend
        self.cache = cache
        self.capabilities: BackendCapabilities = backend.capabilities
        self.calls = 0  # completions actually requested from the backend

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def _key(self, prompt: Prompt, params: GenerationParams, index: int) -> str:
        return completion_key(self.identity(), prompt, params, index)

    def cached_count(
        self, prompts: Sequence[Prompt], params: GenerationParams, n: int, sample_offset: int = 0
    ) -> int:
        """How many of the ``len(prompts) * n`` completions :meth:`generate` would take from
        the cache (for the dry-run's "calls to make"); asks the backend nothing."""
        ident = self.identity()
        count = 0
        for prompt in prompts:
            for j in range(n):
                hit = self.cache.peek(completion_key(ident, prompt, params, sample_offset + j))
                count += hit is not None and not (params.logprobs and _lacks_logprobs(hit))
        return count

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams,
        *,
        n: int = 1,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        out: list[list[Completion | None]] = []
        # Missing samples grouped by their index range, so one backend call serves many prompts.
        missing: dict[tuple[int, int], list[int]] = {}
        for pi, prompt in enumerate(prompts):
            row: list[Completion | None] = []
            first_missing = None
            for j in range(n):
                hit = self.cache.get(self._key(prompt, params, sample_offset + j))
                if hit is not None and params.logprobs and _lacks_logprobs(hit):
                    hit = None  # answered by a server that ignored `logprobs`: ask again
                if hit is None:
                    first_missing = j if first_missing is None else first_missing
                    row.append(None)
                else:
                    row.append(Completion.from_dict(hit))
            if first_missing is not None:
                missing.setdefault((first_missing, n - first_missing), []).append(pi)
            out.append(row)
        for (start, count), indices in missing.items():
            batch = [prompts[i] for i in indices]
            try:
                results = self.backend.generate(
                    batch, params, n=count, sample_offset=sample_offset + start
                )
            except Exception as exc:
                # A backend that failed part-way may attach what it finished (one list per
                # prompt, None for unfinished samples): keep it, so a re-run resumes there.
                self._keep_partial(getattr(exc, "partial_results", None), indices, prompts,
                                   params, sample_offset + start, count)
                raise
            self._check_answer(results, len(batch), count)
            self.calls += len(batch) * count
            writes = []
            for i, completions in zip(indices, results, strict=True):
                for j, comp in enumerate(completions):
                    out[i][start + j] = comp
                    writes.append((self._key(prompts[i], params, sample_offset + start + j), comp.to_dict()))
            self.cache.put_many(writes)
        return [[c for c in row if c is not None] for row in out]

    def generate_mixed(
        self, prompts: Sequence[Prompt], parts: Sequence[tuple[GenerationParams, int]]
    ) -> list[list[list[Completion]]]:
        """``[generate(prompts, params, n=n) for params, n in parts]``: the prompts none of whose
        completions is cached go to the backend's ``generate_mixed`` in one call, when it has
        one (:class:`MixedBackend`); the rest, and every prompt of a backend without it, one
        parameter set at a time (samples partly cached are completed as by :meth:`generate`)."""
        fresh = [i for i, prompt in enumerate(prompts) if self._uncached(prompt, parts)]
        if fresh and len(parts) > 1 and isinstance(self.backend, MixedBackend):
            batch = [prompts[i] for i in fresh]
            results = self.backend.generate_mixed(batch, parts)
            writes = []
            for (params, n), got in zip(parts, results, strict=True):
                self._check_answer(got, len(batch), n)
                self.calls += len(batch) * n
                writes += [(self._key(prompts[i], params, j), comp.to_dict())
                           for i, row in zip(fresh, got, strict=True) for j, comp in enumerate(row)]
            self.cache.put_many(writes)
        return [self.generate(prompts, params, n=n) for params, n in parts]

    def _check_answer(self, results: Any, prompts: int, n: int) -> None:
        """A backend's answer has ``n`` completions for each of ``prompts`` prompts."""
        if len(results) != prompts or any(len(r) != n for r in results):
            raise RuntimeError(
                f"backend {self.identity()} returned {len(results)} results for "
                f"{prompts} prompts (expected {n} completions each)"
            )

    def _uncached(self, prompt: Prompt, parts: Sequence[tuple[GenerationParams, int]]) -> bool:
        """Whether no completion of ``prompt`` that ``parts`` ask for is cached."""
        return all(self.cache.peek(self._key(prompt, params, j)) is None for params, n in parts for j in range(n))

    def _keep_partial(
        self,
        partial: Any,
        indices: list[int],
        prompts: Sequence[Prompt],
        params: GenerationParams,
        first: int,
        count: int,
    ) -> None:
        if not isinstance(partial, list) or len(partial) != len(indices):
            return
        writes = []
        for i, row in zip(indices, partial, strict=True):
            for j, comp in enumerate(list(row or [])[:count]):
                if isinstance(comp, Completion):
                    writes.append((self._key(prompts[i], params, first + j), comp.to_dict()))
        self.calls += len(writes)
        self.cache.put_many(writes)

    def close(self) -> None:
        self.backend.close()
