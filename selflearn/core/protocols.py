"""The component protocols: what an object must offer to fill a pipeline slot.

Components are structurally typed: any object with the right methods works, registered or
not (``Pipeline(source=MySource())``). The small value types used in the signatures live
here too, so a plugin author imports everything from :mod:`selflearn.plugins`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from .records import Completion, Document, Passage, Question, Verdict

#: a chat message: ``{"role": "user", "content": "..."}``
Message = Mapping[str, str]
#: a prompt is raw text or a list of chat messages (the backend applies the chat template)
Prompt = str | Sequence[Message]


@attrs.frozen
class GenerationParams:
    """Decoding parameters of one generation call. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 384
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["stop"] = list(self.stop)
        return d


@attrs.frozen
class BackendCapabilities:
    """What a backend can do; stages check these instead of failing mid-run."""

    chat: bool = True  # accepts chat-message prompts
    raw: bool = True  # accepts raw text prompts
    logprobs: bool = False  # can return per-token log-probabilities
    seed: bool = False  # honours seeds (reproducible sampling)
    max_n: int | None = None  # most samples per prompt in one call (None: unbounded)
    #: answers several parameter sets on the same prompts in one call worth asking for
    #: (:class:`MixedBackend`'s ``generate_mixed``): the generations stage then asks for each
    #: chunk's y* and Y_c together
    mixed: bool = False


@runtime_checkable
class KnowledgeSource(Protocol):
    def documents(self) -> Iterable[Document]:
        """Yield the documents; ``metadata['split']`` (train/test) and ``['category']`` if known."""
        ...


@runtime_checkable
class FingerprintedSource(KnowledgeSource, Protocol):
    """A knowledge source that can tell when its content changed (optional, recommended).

    ``fingerprint()`` returns something JSON-able that changes whenever ``documents()``
    would yield something else (file names, sizes and content hashes; a dataset revision;
    a package version). The documents stage adds it to its fingerprint, so an edited corpus
    re-runs that stage and the stages after it. It must be cheap: it is asked on every run
    and dry-run. A source without it is named in a warning, since changes to its content
    cannot be noticed (``selflearn run --rerun documents`` re-reads it).
    """

    def fingerprint(self) -> Any: ...


@runtime_checkable
class Chunker(Protocol):
    def chunk(self, document: Document, *, max_passages: int | None = None) -> list[Passage]:
        """Cut a document into passages, at most ``max_passages`` of them."""
        ...


@runtime_checkable
class QuestionGenerator(Protocol):
    def generate(
        self, passages: Sequence[Passage], *, per_passage: int = 1, split: str = "train"
    ) -> list[Question]:
        """Write up to ``per_passage`` questions per passage (fewer if all attempts failed).

        The passages of one document arrive in the same call, so duplicates within a
        document can be rejected.
        """
        ...


@runtime_checkable
class InferenceBackend(Protocol):
    capabilities: BackendCapabilities

    def identity(self) -> dict[str, Any]:
        """What makes outputs differ (backend, model, revision): part of every cache key."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams,
        *,
        n: int = 1,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        """Return ``n`` completions per prompt, aligned with ``prompts``.

        ``sample_offset`` is the index of the first sample: a backend that seeds each sample
        by its index makes samples 5..9 of a K=10 run equal to a fresh call with
        ``n=5, sample_offset=5``, which lets the cache extend K without regenerating.
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class MixedBackend(InferenceBackend, Protocol):
    """An inference backend that can answer several parameter sets on the same prompts in one
    call (optional). The generations stage asks for each chunk's greedy y* and its K samples
    with the passage together; a local GPU backend decodes the greedy row beside the samples of
    its prompt (one prefill, one batch) instead of a second pass of one row per prompt, which
    ran at a fifth of the samples' rate (``hf``, docs/performance.md, run 25). The stage asks
    for it where ``capabilities.mixed`` is set; other backends are asked once per parameter
    set."""

    def generate_mixed(
        self, prompts: Sequence[Prompt], parts: Sequence[tuple[GenerationParams, int]]
    ) -> list[list[list[Completion]]]:
        """For each ``(params, n)`` of ``parts``, what ``generate(prompts, params, n=n)``
        returns (the same samples: a seeded backend keys them alike)."""
        ...


@attrs.frozen
class ScoreItem:
    """A reference answer and the samples to compare it with."""

    reference: str
    samples: list[str]
    question: str = ""
    reference_logprobs: list[float] | None = None
    sample_logprobs: list[list[float] | None] | None = None


@attrs.frozen
class ScoreResult:
    """``score`` in [0, 1], higher = the samples disagree more with the reference; one
    ``sample_scores`` entry per sample (None where a sample could not be scored)."""

    score: float | None
    sample_scores: list[float | None]


@runtime_checkable
class Scorer(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]: ...


@attrs.frozen
class TrainRequest:
    """What a trainer is asked to do.

    ``rows`` are dicts: for SFT ``{"prompt", "completion"}``, for preference training
    ``{"prompt", "chosen", "rejected"}`` (prompts are chat messages or text).
    ``lineage`` is copied into the saved model card.
    """

    rows: list[dict[str, Any]]
    model: str
    output_dir: str
    lineage: dict[str, Any] = attrs.field(factory=dict)
    seed: int = 42


@attrs.frozen
class TrainResult:
    model_path: str
    metrics: dict[str, Any] = attrs.field(factory=dict)
    log_history: list[dict[str, Any]] = attrs.field(factory=list)


@runtime_checkable
class Trainer(Protocol):
    #: "sft" (prompt/completion rows) or "preference" (prompt/chosen/rejected rows)
    data_kind: str

    def train(self, request: TrainRequest) -> TrainResult: ...


@attrs.frozen
class JudgeItem:
    question_id: str
    question: str
    passage: str
    candidate: str
    baseline: str


@runtime_checkable
class Judge(Protocol):
    def identity(self) -> dict[str, Any]: ...

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, judged in both orders (see :meth:`Verdict.combine`)."""
        ...


#: slot kind -> protocol, used to check ready objects handed to a Pipeline
PROTOCOLS: dict[str, type] = {
    "knowledge_source": KnowledgeSource,
    "chunker": Chunker,
    "question_generator": QuestionGenerator,
    "inference_backend": InferenceBackend,
    "scorer": Scorer,
    "trainer": Trainer,
    "judge": Judge,
}
