"""Hook specifications: the public extension points of selflearn.

Registration hooks receive a ``register`` callable::

    register(name, factory, *, options=None, description="")

``factory`` (and ``options``) may be ``"module:attr"`` strings, imported only when the component
is used, so listing components never imports torch. A factory is called as
``factory(options, context)`` with the validated options instance and a
:class:`selflearn.plugins.ComponentContext`, and returns an object that satisfies the
component protocol of its kind (:mod:`selflearn.plugins.protocols`).

Lifecycle hooks collect every implementation's call; their return values are ignored.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "selflearn"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: component kind -> the registration hook that contributes it
REGISTRATION_HOOKS: dict[str, str] = {
    "knowledge_source": "register_knowledge_sources",
    "chunker": "register_chunkers",
    "question_generator": "register_question_generators",
    "inference_backend": "register_inference_backends",
    "scorer": "register_scorers",
    "trainer": "register_trainers",
    "judge": "register_judges",
}


class Hooks:
    """The hook specifications (a namespace class, as pluggy expects)."""

    @hookspec
    def register_knowledge_sources(self, register: Any) -> None:
        """Register knowledge sources: components with ``documents() -> Iterable[Document]``."""

    @hookspec
    def register_chunkers(self, register: Any) -> None:
        """Register chunkers: ``chunk(document, max_passages) -> list[Passage]``."""

    @hookspec
    def register_question_generators(self, register: Any) -> None:
        """Register question generators: ``generate(passages, ...) -> list[Question]``."""

    @hookspec
    def register_inference_backends(self, register: Any) -> None:
        """Register inference backends: batch generation with K samples per prompt."""

    @hookspec
    def register_scorers(self, register: Any) -> None:
        """Register scorers: disagreement of a reference with samples, per item and per sample."""

    @hookspec
    def register_trainers(self, register: Any) -> None:
        """Register trainers: train a model from SFT rows or preference pairs."""

    @hookspec
    def register_judges(self, register: Any) -> None:
        """Register judges: pairwise verdicts, judged in both orders."""

    @hookspec
    def on_run_start(self, run: Any) -> None:
        """Called once before the first stage runs; ``run`` is the :class:`RunInfo`."""

    @hookspec
    def on_stage_end(self, run: Any, stage: str, summary: dict[str, Any]) -> None:
        """Called after each stage finished (or was found finished and skipped)."""

    @hookspec
    def on_run_end(self, run: Any, summary: dict[str, Any]) -> None:
        """Called once after the last requested stage."""

    @hookspec(firstresult=True)
    def resolve_secret(self, name: str) -> str | None:
        """Return the secret called ``name`` (e.g. ``OPENAI_API_KEY``), or None to pass.

        The first plugin that answers wins; the environment is the fallback.
        """
