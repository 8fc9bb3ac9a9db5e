"""Stage ``evaluate`` (being built; see its issue)."""

from __future__ import annotations

from typing import Any

import attrs

from .base import Stage


@attrs.frozen
class EvaluateOptions:
    pass


class EvaluateStage(Stage):
    name = "evaluate"
    requires = ("train",)
    options_class = EvaluateOptions

    def run(self) -> dict[str, Any]:
        raise NotImplementedError("stage evaluate is not built yet")
