"""Which prompt each group of the shared decoder holds, and which prompts wait (refill).

Why: the shared decoder lays a batch out as groups of sample slots, one prompt per group (its
samples share the prompt's prefix). Rows end at different steps (EOS, a stop string); without
refill a group that finished early sits idle until the longest row of the whole batch ends.
With refill, the host looks every few steps, collects the groups whose rows all ended and gives
them the next waiting prompts, so the GPU keeps decoding full batches (continuous batching at
the granularity of a prompt). Each row counts its own steps from its start, so its tokens are
the same as in a batch of its own (sampling noise depends on the row's key and own step only).
"""

from __future__ import annotations

from collections import deque

import attrs


@attrs.define
class Schedule:
    """The host's table of the groups: which prompt each holds (-1: none) and the global step at
    which it started; the prompts still waiting, in order."""

    groups: int
    max_new_tokens: int
    waiting: deque[int]
    owner: list[int] = attrs.field(init=False)
    start: list[int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.owner = [-1] * self.groups
        self.start = [0] * self.groups

    @classmethod
    def of(cls, prompts: int, groups: int, max_new_tokens: int) -> Schedule:
        return cls(groups, max_new_tokens, deque(range(prompts)))

    def active(self) -> list[int]:
        """The groups that hold a prompt."""
        return [g for g in range(self.groups) if self.owner[g] >= 0]

    def assign(self, t: int) -> list[tuple[int, int]]:
        """Give free groups the next waiting prompts, starting at global step ``t``: the
        (group, prompt) pairs assigned."""
        pairs = []
        for g in range(self.groups):
            if self.owner[g] < 0 and self.waiting:
                p = self.waiting.popleft()
                self.owner[g], self.start[g] = p, t
                pairs.append((g, p))
        return pairs

    def release(self, group: int) -> int:
        """Free ``group``; the prompt it held."""
        p, self.owner[group] = self.owner[group], -1
        return p

    def own_steps(self, t: int) -> int:
        """An upper bound of the steps any active row has taken at global step ``t``."""
        return t - min((self.start[g] for g in self.active()), default=t)

    def horizon(self) -> int:
        """The global step by which every active row has ended (its token budget spent)."""
        return max((self.start[g] for g in self.active()), default=0) + self.max_new_tokens
