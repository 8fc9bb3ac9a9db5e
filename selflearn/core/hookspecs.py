"""Hook specifications: the public extension points of selflearn.

Two families of hooks:

- **registration hooks** (``register_*``) are called once per plugin host, with a ``register``
  callable (:class:`Register`); each call of ``register`` contributes one named component of
  the hook's kind. ``factory`` (and ``options``) may be ``"module:attr"`` strings, imported
  only when the component is used, so listing components never imports torch.
- **lifecycle hooks** (``on_*``) are called for every plugin that implements them; their return
  values are ignored. ``resolve_secret`` is the one ``firstresult`` hook.

An implementation may declare fewer arguments than its spec (pluggy passes only those it
names), which is how a spec can gain an argument without breaking existing plugins.
``docs/hooks.md`` is generated from this module (``python -m selflearn.core.hookdocs``; a test
fails when it is out of date), and every hook here must be named by a test's
``@pytest.mark.hooks(...)`` (``tests/core/test_hook_coverage.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import attrs
import pluggy

if TYPE_CHECKING:
    from .records import Verdict  # noqa: F401 - named in docstrings

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
    "evaluator": "register_evaluators",
}


class Register(Protocol):
    """The ``register`` callable a registration hook receives."""

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        options: Any = None,
        description: str = "",
        replace: bool = False,
    ) -> None:
        """Contribute the component ``name``.

        ``factory`` is called as ``factory(options, context)`` (``options``: an instance of
        the ``options`` attrs class validated from the user's configuration, or None when no
        options class is given; ``context``: a ``ComponentContext``) and returns the
        component. Both may be ``"module:attr"`` strings. A name another plugin registered in
        the same kind is an error naming both plugins, unless exactly one of them passes
        ``replace=True``: that one wins (whatever the load order) and ``selflearn components``
        shows what it replaced.
        """


@attrs.frozen
class RunInfo:
    """What lifecycle hooks receive about the run."""

    #: the run directory (a local path or an fsspec URL)
    run_dir: str
    #: the effective configuration (component slots described; never a secret)
    config: dict[str, Any]
    #: the stages this call of ``Pipeline.run`` was asked to run, in order
    stages: tuple[str, ...]


class Hooks:
    """The hook specifications (a namespace class, as pluggy expects)."""

    @hookspec
    def register_knowledge_sources(self, register: Register) -> None:
        """Register knowledge sources.

        A knowledge source has ``documents() -> Iterable[Document]``: valid documents with
        unique ids and non-empty text; ``metadata["split"]`` (``train``/``test``) and
        ``metadata["category"]`` where known. Optional ``fingerprint() -> JSON-able``: a value
        that changes when the content does, so an edited corpus re-runs the stages after it
        (docs/plugins.md). Built-ins: ``wikipedia``, ``wikipedia-offline``, ``files``.
        Contract: ``selflearn.plugins.testing.check_knowledge_source``.
        """

    @hookspec
    def register_chunkers(self, register: Register) -> None:
        """Register chunkers.

        A chunker has ``chunk(document, *, max_passages=None) -> list[Passage]``: passages of
        that document, at most ``max_passages`` of them. Built-in: ``sentences``.
        Contract: ``selflearn.plugins.testing.check_chunker``.
        """

    @hookspec
    def register_question_generators(self, register: Register) -> None:
        """Register question generators.

        A question generator has ``generate(passages, *, per_passage=1, split="train") ->
        list[Question]``: up to ``per_passage`` questions per passage, each naming its
        passage; the passages of one document arrive in one call. Built-ins: ``openai``,
        ``local``, ``template``. Contract: ``selflearn.plugins.testing.check_question_generator``.
        """

    @hookspec
    def register_inference_backends(self, register: Register) -> None:
        """Register inference backends.

        A backend has ``capabilities`` (``BackendCapabilities``: chat, raw, logprobs, seed,
        max_n), ``identity() -> dict`` (part of every cache key), ``generate(prompts, params,
        *, n=1, sample_offset=0) -> list[list[Completion]]`` (``n`` completions per prompt,
        aligned; sample ``i`` seeded by ``sample_offset + i`` where it declares ``seed``) and
        ``close()``. Built-ins: ``hf``, ``tgi``, ``openai``, ``echo``.
        Contract: ``selflearn.plugins.testing.check_inference_backend``.
        """

    @hookspec
    def register_scorers(self, register: Register) -> None:
        """Register scorers.

        A scorer has ``identity() -> dict`` and ``score(items: Sequence[ScoreItem]) ->
        list[ScoreResult]``: one result per item, aligned; ``score`` in [0, 1] (higher = the
        samples disagree more with the reference) or None, and one ``sample_scores`` entry
        per sample. Optional ``needs_logprobs``: true makes the scores stage stop with an error
        naming the backend when no sample of the run has log-probabilities, instead of letting
        the scorer fall back. Built-ins: ``selfcheck-nli``, ``selfcheck-embedding``,
        ``bsdetector``, ``semantic-entropy``, ``lexical``. Contract:
        ``selflearn.plugins.testing.check_scorer``.
        """

    @hookspec
    def register_trainers(self, register: Register) -> None:
        """Register trainers.

        A trainer has ``data_kind`` (``"sft"``: prompt/completion rows, or ``"preference"``:
        prompt/chosen/rejected rows) and ``train(TrainRequest) -> TrainResult``; the result's
        ``model_path`` is a folder the ``hf`` backend can load. Built-ins: ``trl-sft``,
        ``trl-dpo``. Contract: ``selflearn.plugins.testing.check_trainer``.
        """

    @hookspec
    def register_judges(self, register: Register) -> None:
        """Register judges.

        A judge has ``identity() -> dict`` and ``judge(items: Sequence[JudgeItem]) ->
        list[Verdict]``: one verdict per item, aligned, judged in both orders (candidate
        first and baseline first, combined with ``Verdict.combine``). Built-ins: ``openai``,
        ``local``. Contract: ``selflearn.plugins.testing.check_judge``.
        """

    @hookspec
    def register_evaluators(self, register: Register) -> None:
        """Register evaluators: measures of the ``evaluate`` stage.

        An evaluator has ``evaluate(ctx: EvaluationContext) -> EvaluationResult`` and
        optionally ``validate(ctx)``, ``outputs(ctx)``, ``items(ctx)`` (extra question sets
        both models answer) and ``requests(ctx)`` (other generations it needs from either
        model); see :mod:`selflearn.core.evaluation`. Its result is merged into
        ``evaluation/report.json``, report.md (a before/after table row, a section, figures)
        and the stage summary. Built-ins: ``agreement``, ``qa``, ``judge``, ``forgetting``,
        ``detection`` (configured by the ``evaluate`` section); a third party's evaluators run
        when named in ``evaluate.evaluators``. Contract:
        ``selflearn.plugins.testing.check_evaluator``.
        """

    @hookspec
    def on_run_start(self, run: RunInfo) -> None:
        """Called once before the first stage of ``Pipeline.run`` runs.

        ``run`` is the :class:`RunInfo` (run directory, effective configuration, the stages
        to run). Use it to open an experiment tracker or log the configuration. A plugin
        whose hook raises stops the run with an error naming the plugin.
        """

    @hookspec
    def on_stage_end(self, run: RunInfo, stage: str, summary: dict[str, Any]) -> None:
        """Called after each stage finished, or was found finished and skipped.

        ``stage`` is the stage name (``documents`` ... ``evaluate``); ``summary`` is the
        dict the stage returned (also written to ``manifest.json``). Do not modify it.
        """

    @hookspec
    def on_run_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        """Called once after the last requested stage, with every stage's summary by name.

        Not called when a stage failed (the error propagates instead).
        """

    @hookspec(firstresult=True)
    def resolve_secret(self, name: str) -> str | None:
        """Return the secret called ``name`` (e.g. ``OPENAI_API_KEY``), or None to pass.

        The first plugin that answers wins; the environment variable of that name is the
        fallback. Components ask through ``context.secret(name)``; selflearn never writes a
        secret to logs, manifests, artifacts or error messages.
        """
