"""Every built-in scorer passes ``selflearn.plugins.testing.check_scorer`` (lexical:
tests/core/test_contracts.py), built through the registry from configuration as a pipeline
builds it, on the tiny NLI and encoder fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selflearn.plugins.testing import build_component, check_scorer


@pytest.mark.parametrize("name", ["selfcheck-nli", "bsdetector", "semantic-entropy"])
def test_nli_scorers(name: str, nli2_model: str, tmp_path: Path) -> None:
    scorer = build_component("scorer", {"use": name, "options": {"model": nli2_model, "device": "cpu"}},
                             run_dir=tmp_path / "run", backend="echo")
    results = check_scorer(scorer)
    assert any(r.score is not None for r in results)
    close: Any = getattr(scorer, "close", None)
    if callable(close):
        close()


def test_embedding_scorer(tiny_encoder: str, tmp_path: Path) -> None:
    scorer = build_component("scorer", {"use": "selfcheck-embedding",
                                        "options": {"model": tiny_encoder, "device": "cpu"}},
                             run_dir=tmp_path / "run")
    assert all(r.score is not None for r in check_scorer(scorer))
