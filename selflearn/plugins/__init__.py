"""What a plugin author imports.

A plugin is a module or object with ``@hookimpl`` functions::

    from selflearn.plugins import hookimpl

    @hookimpl
    def register_knowledge_sources(register):
        register("my-wiki", "my_pkg.source:create", options="my_pkg.source:Options",
                 description="Pages of our company wiki")

and is published through the entry-point group ``selflearn`` in its ``pyproject.toml``::

    [project.entry-points.selflearn]
    my-wiki = "my_pkg.plugin"
"""

from ..core.context import ComponentContext
from ..core.evaluation import (
    BaseEvaluator,
    EvalItem,
    EvaluationContext,
    EvaluationResult,
    Evaluator,
    GenerationRequest,
    MeasureRow,
)
from ..core.hookspecs import Register, RunInfo, hookimpl, hookspec
from ..core.options import Options
from ..core.protocols import (
    BackendCapabilities,
    Chunker,
    FingerprintedSource,
    GenerationParams,
    InferenceBackend,
    Judge,
    JudgeItem,
    KnowledgeSource,
    Message,
    MixedBackend,
    Prompt,
    QuestionGenerator,
    ScoreItem,
    Scorer,
    ScoreResult,
    Trainer,
    TrainRequest,
    TrainResult,
)
from ..core.records import (
    Completion,
    Document,
    Generations,
    Passage,
    PreferencePair,
    Question,
    Scores,
    SFTExample,
    Verdict,
)

__all__ = [
    "BackendCapabilities",
    "BaseEvaluator",
    "EvalItem",
    "EvaluationContext",
    "EvaluationResult",
    "Evaluator",
    "GenerationRequest",
    "MeasureRow",
    "Register",
    "RunInfo",
    "Chunker",
    "Completion",
    "ComponentContext",
    "Document",
    "GenerationParams",
    "Generations",
    "InferenceBackend",
    "MixedBackend",
    "Judge",
    "JudgeItem",
    "FingerprintedSource",
    "KnowledgeSource",
    "Message",
    "Options",
    "Passage",
    "PreferencePair",
    "Prompt",
    "Question",
    "QuestionGenerator",
    "SFTExample",
    "ScoreItem",
    "ScoreResult",
    "Scorer",
    "Scores",
    "TrainRequest",
    "TrainResult",
    "Trainer",
    "Verdict",
    "hookimpl",
    "hookspec",
]
