"""The decode rows of one ``hf`` call: which (prompt, slot) rows run, with which sampling key,
and which of them decode greedily; for ``generate`` (one parameter set) and
``generate_mixed`` (several on the same prompts, e.g. the generations stage's greedy y* and its
K samples with the passage).

Why mix: the stage's greedy reference pass was a separate call of one row per prompt. On the
GPU that pass prefilled every passage prompt a second time and decoded 256 rows per chunk at
nearly the step time of 2,560 (a decode step is bound by its weights and launches, not its
rows): 28 of the 158 s of a 2,048-question stage at paper scale (run 25). Decoded with the
samples of the same prompt, the greedy row shares their prefill and prompt prefix and adds
one row in eleven to their batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import attrs

from ....core.protocols import GenerationParams, Prompt
from .sampling import LogprobSource, SamplingConfig, row_key

Row = tuple[int, int]  # (prompt index, slot among the prompt's rows)


@attrs.frozen
class Part:
    """One parameter set of a call: ``n`` completions per prompt from sample ``offset`` on."""

    params: GenerationParams
    n: int
    offset: int = 0

    @property
    def rows_per_prompt(self) -> int:
        """Greedy parts decode once per prompt (the answer is repeated ``n`` times)."""
        return 1 if self.params.greedy else self.n


def sampling_config(params: GenerationParams, logprobs: LogprobSource) -> SamplingConfig:
    """The decoders' constants for ``params`` (``logprobs``: the backend's option)."""
    return SamplingConfig(
        greedy=params.greedy,
        temperature=params.temperature if not params.greedy else 1.0,
        top_p=params.top_p,
        repetition_penalty=params.repetition_penalty,
        logprobs=logprobs if params.logprobs else None,
    )


def unmixable(parts: Sequence[Part]) -> str | None:
    """Why ``parts`` cannot decode in one run (None: they can): the rows of one run share the
    repetition penalty, stop strings and log-probability mode, and all their sampled rows one
    temperature, top-p and seed; greedy rows join them (``SamplingConfig.mixed``), each row
    with its own length (``DecodeBatch.max_new``)."""
    if len(parts) < 2:
        return "a single parameter set"
    first = parts[0].params
    shared = ("repetition_penalty", "stop", "logprobs")
    for part in parts[1:]:
        for name in shared:
            if getattr(part.params, name) != getattr(first, name):
                return f"different {name}"
    sampled = [p for p in parts if not p.params.greedy]
    if len(sampled) != 1:
        return f"{len(sampled)} sampled parameter sets (one is mixed with greedy ones)"
    return None


@attrs.frozen
class RowPlan:
    """The rows of a call over ``parts``: each prompt's rows are the parts' slots in order."""

    parts: list[Part]
    cfg: SamplingConfig
    keys: dict[Row, int]
    #: per row, whether it decodes greedily (None: as ``cfg`` says, the same for all)
    greedy: dict[Row, bool] | None
    #: the first slot of each part
    starts: list[int]
    #: per row, the most tokens it generates (None: the parts' ``max_new_tokens`` are equal)
    max_new: dict[Row, int] | None = None

    @property
    def longest(self) -> GenerationParams:
        """The parameters of the part with the most new tokens (they bound the run, and the
        prompt length the model's context leaves)."""
        return max((p.params for p in self.parts), key=lambda params: params.max_new_tokens)

    @property
    def per_prompt(self) -> int:
        return sum(p.rows_per_prompt for p in self.parts)

    def completions_of(self, prompts: int, part: int, make: Callable[[int, Row, GenerationParams], Any]) -> list[list[Any]]:
        """``make(prompt, row, params)`` for part ``part``'s rows, ``n`` per prompt (a greedy
        part's one row repeated)."""
        p = self.parts[part]
        start = self.starts[part]
        out = []
        for i in range(prompts):
            comps = [make(i, (i, start + j), p.params) for j in range(p.rows_per_prompt)]
            out.append(comps * p.n if p.params.greedy else comps)
        return out


def plan(prompts: Sequence[Prompt], parts: Sequence[Part], seed: int, logprobs: LogprobSource,
         prompt_key: Callable[[Prompt], Hashable]) -> RowPlan:
    """The rows of ``parts`` (one part, or parts that :func:`unmixable` accepts). A sampled
    row's key is that of ``generate(prompts, params, n, offset)``'s same sample, so its tokens
    are the same whichever way it is asked for."""
    sampled = [p for p in parts if not p.params.greedy]
    base = sampling_config(sampled[0].params if sampled else parts[0].params, logprobs)
    mixed = bool(sampled) and len(sampled) < len(parts)
    cfg = attrs.evolve(base, mixed=True) if mixed else base
    starts, slot = [], 0
    for part in parts:
        starts.append(slot)
        slot += part.rows_per_prompt
    keys: dict[Row, int] = {}
    greedy: dict[Row, bool] = {}
    limits: dict[Row, int] = {}
    for i, prompt in enumerate(prompts):
        pk = prompt_key(prompt)
        for part, start in zip(parts, starts, strict=True):
            part_seed = part.params.seed if part.params.seed is not None else seed
            for j in range(part.rows_per_prompt):
                row = (i, start + j)
                keys[row] = row_key(part_seed, pk, part.offset + j)
                greedy[row] = part.params.greedy
                limits[row] = part.params.max_new_tokens
    alike = len({p.params.max_new_tokens for p in parts}) == 1
    return RowPlan(list(parts), cfg, keys, greedy if mixed else None, starts, None if alike else limits)
