"""Checks of the generations stage's answers that catch a server which does not do what the
request asked: samples that do not vary (sampling parameters ignored) and log-probabilities
that never came back.

Knowledge detection compares K samples with the greedy reference y* (method.md 7.2). A server
that ignores ``temperature`` (``transformers serve`` samples only when the model's generation
config enables ``do_sample``; a vLLM or TGI deployment whose generation config or proxy forces
greedy decoding behaves the same) returns K copies of y*: every question then looks perfectly
consistent and known, and the pipeline would build its datasets from noise without a word.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..records import Completion, Generations

#: what commonly makes a server ignore the sampling parameters, for the warning and the error
LIKELY_CAUSES = (
    "the server ignores the sampling parameters (temperature, top_p, seed): `transformers serve` "
    "samples only when the model's generation_config.json sets do_sample: true; a vLLM, SGLang "
    "or TGI deployment (or a proxy in front of it) that forces greedy decoding, e.g. through a "
    "server-side generation config, does the same. See docs/servers.md"
)


def _same(texts: Sequence[str]) -> bool:
    return len({t.strip() for t in texts}) == 1


def set_diversity(records: Sequence[Generations], field: str) -> dict[str, Any]:
    """For one sample set: how many questions have K >= 2 samples, and the share of them whose
    samples are all the same text, and all the same as y*."""
    sets = [(r.reference.text, [c.text for c in getattr(r, field)]) for r in records]
    sets = [(ref, samples) for ref, samples in sets if len(samples) >= 2]
    identical = [(ref, samples) for ref, samples in sets if _same(samples)]
    as_ref = [1 for ref, samples in identical if samples[0].strip() == ref.strip()]
    n = len(sets)
    return {
        "questions": n,
        "all_identical": round(len(identical) / n, 4) if n else None,
        "all_equal_reference": round(len(as_ref) / n, 4) if n else None,
    }


def sample_diversity(records: Sequence[Generations], greedy: Sequence[str] = ()) -> dict[str, Any]:
    """Diversity of Y_c and Y_r (the stage summary's ``sample_diversity``); a set decoded
    greedily on purpose (``temperature: 0``, named in ``greedy``) is marked, not judged."""
    return {
        field: {**set_diversity(records, field), "sampled": field not in greedy}
        for field in ("with_passage", "without_passage")
    }


def diversity_problem(stats: dict[str, Any], threshold: float, backend: dict[str, Any]) -> str | None:
    """A message when the share of questions with identical samples exceeds ``threshold`` in
    either sample set, else None."""
    worst = [
        (field, s) for field, s in stats.items()
        if s.get("sampled", True) and s["all_identical"] is not None and s["all_identical"] > threshold
    ]
    if not worst:
        return None
    parts = [
        f"{s['all_identical']:.0%} of the {s['questions']} questions got {field} samples that are all "
        f"the same text ({s['all_equal_reference']:.0%} all equal to the greedy reference y*)"
        for field, s in worst
    ]
    return (
        f"generations: {'; '.join(parts)}, above generations.max_identical_share = {threshold}. "
        f"The backend {json.dumps(backend, sort_keys=True)} most likely does not sample: "
        f"{LIKELY_CAUSES}. Scores computed from such samples are meaningless. Fix the server, "
        "delete the cached answers (cache/generations.jsonl in the run directory, or the "
        "run's cache_dir) and run the stage again; or raise generations.max_identical_share "
        "if your answers are genuinely this repetitive"
    )


def _answered(c: Completion) -> bool:
    return bool(c.text.strip()) and c.completion_tokens != 0


def missing_logprobs(records: Sequence[Generations]) -> tuple[int, int]:
    """(answers with text, of which without log-probabilities)."""
    comps = [c for r in records for c in (r.reference, *r.with_passage, *r.without_passage)]
    answered = [c for c in comps if _answered(c)]
    return len(answered), sum(1 for c in answered if not c.logprobs)


def no_logprobs_message(backend: dict[str, Any], answered: int) -> str:
    """The error when generations.logprobs is on and no answer came back with any."""
    return (
        f"generations.logprobs is true, but the backend {json.dumps(backend, sort_keys=True)} "
        f"returned no log-probabilities for any of the {answered} answers: the server ignores "
        "the request's `logprobs` field (`transformers serve` does; see docs/servers.md). Use a "
        "backend that returns them (hf, tgi, or openai against vLLM, SGLang or llama.cpp's "
        "server), or set generations.logprobs: false (the semantic-entropy scorer then needs "
        "scorer.options.use_logprobs: false)"
    )
