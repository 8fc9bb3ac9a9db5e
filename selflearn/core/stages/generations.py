"""Stage ``generations`` (being built; see its issue)."""

from __future__ import annotations

from typing import Any

import attrs

from .base import Stage


@attrs.frozen
class GenerationsOptions:
    pass


class GenerationsStage(Stage):
    name = "generations"
    requires = ("questions",)
    options_class = GenerationsOptions

    def run(self) -> dict[str, Any]:
        raise NotImplementedError("stage generations is not built yet")
