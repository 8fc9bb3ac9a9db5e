"""``local`` judge: the pairwise protocol of :mod:`.common` through any inference backend.

Use it to judge with a local or self-hosted model (``hf``, ``tgi``, ``openai``-compatible
backends, or a plugin's backend). The judge's backend is its own option (a component spec such
as ``{use: hf, options: {model: ...}}``); left out, the pipeline's backend is used. Retries of
an unparseable answer ask for sample index 1, 2, ... of the same prompt, so they differ only
when ``temperature`` > 0 (the default 0.3, as the paper's judge).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ...core.errors import ConfigError
from ...core.options import bounded
from ...core.protocols import GenerationParams, JudgeItem, Message
from ...core.records import Verdict
from .common import DEFAULT_MAX_ATTEMPTS, JudgeRequest, PairwiseProtocol

if TYPE_CHECKING:
    from ...core.context import ComponentContext


@attrs.frozen
class Options:
    #: the judge's inference backend: a name or {use: NAME, options: {...}}; None: the
    #: pipeline's backend
    backend: str | dict[str, Any] | None = None
    #: sampling temperature (the paper's judge: 0.3)
    temperature: float = bounded(0.3, ge=0)
    #: most new tokens of the answer (small chat models often say "Response A": 5 leaves room)
    max_new_tokens: int = bounded(5, ge=1, le=1_000_000)
    #: calls per order before an unparseable order makes the item "unjudged"
    max_attempts: int = bounded(DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    #: seed of the sampled answers; None: the run's seed
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: send the judge's instructions as a system message; false folds them into the user
    #: message (for chat templates that reject the system role)
    system_message: bool = True
    #: judge calls per backend batch
    batch_size: int = bounded(32, ge=1)


def _fold_system(messages: Sequence[Message]) -> list[dict[str, str]]:
    system = "\n\n".join(m["content"] for m in messages if m.get("role") == "system")
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    if system and rest:
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


class LocalJudge:
    """A :class:`selflearn.plugins.Judge` whose model is any inference backend."""

    def __init__(
        self,
        options: Options,
        backend: Any,
        *,
        seed: int,
        cache: Any,
        progress: Callable[..., Any] | None = None,
        path: str = "judge",
        owns_backend: bool = False,
    ) -> None:
        caps = getattr(backend, "capabilities", None)
        if caps is not None and not getattr(caps, "chat", True):
            raise ConfigError(
                "the local judge sends chat messages, but this backend declares chat=False; "
                "choose a backend that accepts chat prompts",
                f"{path}.options.backend",
            )
        self.options = options
        self.backend = backend
        self.owns_backend = owns_backend
        self.seed = options.seed if options.seed is not None else seed
        self.params = GenerationParams(
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            seed=self.seed,
        )
        self.protocol = PairwiseProtocol(
            self._complete,
            identity=self.identity(),
            params={**self.params.to_dict(), "system_message": options.system_message},
            cache=cache,
            max_attempts=options.max_attempts,
            batch_size=options.batch_size,
            progress=progress,
        )

    def identity(self) -> dict[str, Any]:
        return {"judge": "local", "backend": self.backend.identity()}

    def _complete(self, requests: Sequence[JudgeRequest], on_result: Callable[[int, str], None]) -> None:
        by_attempt: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            by_attempt.setdefault(req.attempt, []).append(i)
        for attempt, indices in by_attempt.items():
            prompts = [
                list(requests[i].messages)
                if self.options.system_message
                else _fold_system(requests[i].messages)
                for i in indices
            ]
            results = self.backend.generate(prompts, self.params, n=1, sample_offset=attempt)
            for i, completions in zip(indices, results, strict=False):
                on_result(i, completions[0].text if completions else "")

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return self.protocol.judge(items)

    def close(self) -> None:
        """Closes the judge's own backend (never the pipeline's, which the run closes)."""
        if self.owns_backend:
            self.backend.close()


def create(options: Options, context: ComponentContext) -> LocalJudge:
    owns = options.backend is not None
    if options.backend is None:
        backend = context.backend()
    else:
        backend = context.build("inference_backend", options.backend, "options.backend")
    return LocalJudge(
        options,
        backend,
        seed=context.seed,
        cache=context.cache("judge"),
        progress=context.progress,
        path=context.path,
        owns_backend=owns,
    )
