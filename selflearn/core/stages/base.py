"""The stage contract and the stage order.

A stage reads the files of earlier stages from the run directory, uses components from the
:class:`RunContext`, writes its own files atomically and returns a small summary. The
pipeline skips a stage whose fingerprint (its options, the components it uses, and the hashes
of its input files) matches the manifest; within a stage, content-keyed caches make a resumed
run skip every finished model call.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from ..context import RunContext
from ..options import Options


@attrs.frozen
class NoOptions(Options):
    """A stage without options."""


class Stage:
    """Base class of pipeline stages."""

    name: ClassVar[str] = ""
    #: stages whose output files this stage reads (their hashes enter the fingerprint)
    requires: ClassVar[tuple[str, ...]] = ()
    #: component slots this stage uses (their configuration enters the fingerprint)
    slots: ClassVar[tuple[str, ...]] = ()
    options_class: ClassVar[type] = NoOptions
    #: under accelerate launch / torchrun, every process runs this stage (training); the other
    #: stages run in the main process alone while the others wait for them
    distributed: ClassVar[bool] = False
    #: the flows (top-level ``flow:``) this stage runs in; None: all of them
    flows: ClassVar[tuple[str, ...] | None] = None
    #: the stage works differently in ``flow: paper`` (the flow enters its fingerprint), so
    #: switching the flow of a run keeps the stages before it done
    flow_sensitive: ClassVar[bool] = False

    def __init__(self, run: RunContext, options: Any) -> None:
        self.run_ctx = run
        self.options = options

    @property
    def store(self) -> Any:
        return self.run_ctx.store

    @property
    def flow(self) -> str:
        """The run's training order, ``current`` or ``paper``."""
        return str(self.run_ctx.config.get("flow") or "current")

    def dependencies(self) -> tuple[str, ...]:
        """The stages whose outputs this stage reads in this run's flow (``requires`` plus
        any the flow adds); their output hashes enter the fingerprint."""
        return self.requires

    def outputs(self) -> list[str]:
        """Files (relative to the run directory) this stage writes; all must exist when done."""
        return [f"{self.name}.jsonl"]

    def fingerprint_config(self) -> dict[str, Any]:
        """Everything that changes this stage's output besides its input files (the flow for
        a flow-sensitive stage, and only when it is not the default, so that existing runs
        keep their fingerprints)."""
        config = {
            "options": attrs.asdict(self.options) if attrs.has(type(self.options)) else None,
            "slots": {
                s: (self.run_ctx.slots[s].describe() if self.run_ctx.slots.get(s) else None)  # type: ignore[union-attr]
                for s in self.slots
            },
            "seed": self.run_ctx.seed,
            "model": self.run_ctx.model,
        }
        if self.flow_sensitive and self.flow != "current":
            config["flow"] = self.flow
        return config

    def validate(self) -> None:
        """Check the slots this stage needs before any stage runs (fail early)."""
        for slot in self.slots:
            self.run_ctx.validate_slot(slot)

    def estimate(self) -> dict[str, Any]:
        """For ``--dry-run``: the model calls this stage would make, as far as known."""
        return {}

    def run(self) -> dict[str, Any]:
        raise NotImplementedError


def count_questions(store: Any, splits: list[str], name: str = "questions.jsonl") -> int | None:
    """Questions of ``splits`` in ``name``, or None when the file does not exist yet."""
    if not store.exists(name):
        return None
    return sum(1 for row in store.iter_jsonl(name) if row.get("split", "train") in splits)


#: the stages in order, as "module:Class" so that importing selflearn imports none of them
STAGE_ORDER: tuple[tuple[str, str], ...] = (
    ("documents", "selflearn.core.stages.documents:DocumentsStage"),
    ("passages", "selflearn.core.stages.passages:PassagesStage"),
    ("questions", "selflearn.core.stages.questions:QuestionsStage"),
    ("sft", "selflearn.core.stages.sft:SFTStage"),  # flow: paper only
    ("sft_model", "selflearn.core.stages.sft_model:SFTModelStage"),  # flow: paper only
    ("generations", "selflearn.core.stages.generations:GenerationsStage"),
    ("scores", "selflearn.core.stages.scores:ScoresStage"),
    ("datasets", "selflearn.core.stages.datasets:DatasetsStage"),
    ("train", "selflearn.core.stages.train:TrainStage"),
    ("evaluate", "selflearn.core.stages.evaluate:EvaluateStage"),
)
STAGE_NAMES: tuple[str, ...] = tuple(name for name, _ in STAGE_ORDER)
