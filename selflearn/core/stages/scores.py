"""Stage ``scores`` (being built; see its issue)."""

from __future__ import annotations

from typing import Any

import attrs

from .base import Stage


@attrs.frozen
class ScoresOptions:
    pass


class ScoresStage(Stage):
    name = "scores"
    requires = ("generations",)
    options_class = ScoresOptions

    def run(self) -> dict[str, Any]:
        raise NotImplementedError("stage scores is not built yet")
