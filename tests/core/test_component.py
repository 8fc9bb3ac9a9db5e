"""``selflearn.component``: one component built by name outside a pipeline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import selflearn
from selflearn.core.errors import ConfigError
from selflearn.plugins import GenerationParams, ScoreItem, hookimpl

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    section = doc[doc.index("## Using one component on its own"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(compile(code.group(1), "docs/plugins.md", "exec"), {})  # noqa: S102 - the doc's own example
    lines = capsys.readouterr().out.splitlines()
    score, samples = lines[0].split(" ", 1)[0], eval(lines[1])  # noqa: S307 - a printed list
    assert 0.0 < float(score) < 1.0
    assert len(samples) == 2 and samples[0] != samples[1] and len(samples[0].split()) == 4


def test_names_mappings_and_keyword_options_build_the_registered_component() -> None:
    from selflearn.builtin.backends.echo import EchoBackend
    from selflearn.builtin.scorers.lexical import LexicalScorer

    scorer = selflearn.component("scorer", {"use": "lexical", "options": {"lowercase": True}}, lowercase=False)
    assert isinstance(scorer, LexicalScorer) and scorer.options.lowercase is False  # the keyword wins
    item = ScoreItem(reference="Paris", samples=["paris", "Paris"])
    assert scorer.score([item])[0].sample_scores == [1.0, 0.0]
    backend = selflearn.component("inference_backend", "echo", model="tiny", sample_words=3)
    assert isinstance(backend, EchoBackend)
    (out,) = backend.generate(["A question about Paris and Rome?"], GenerationParams(temperature=1.0, seed=3), n=1)
    assert len(out[0].text.split()) == 3


def test_bad_kinds_names_and_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown component kind 'scorers'.*valid kinds are:.*scorer"):
        selflearn.component("scorers", "lexical")
    with pytest.raises(ConfigError, match=r"backend: unknown inference backend 'ecko' \(did you mean 'echo'\?\)"):
        selflearn.component("backend", "ecko")
    with pytest.raises(ConfigError, match=r"scorer.options.lowercase: expected"):
        selflearn.component("scorer", "lexical", lowercase="maybe")
    with pytest.raises(ConfigError, match=r"scorer.options: unknown option\(s\) colour"):
        selflearn.component("scorer", {"use": "lexical", "options": {"colour": 1}})


def test_in_process_plugins_and_context_reach_the_factory(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Plugin:
        @hookimpl
        def register_scorers(self, register: Any) -> None:
            def make(options: Any, context: Any) -> Any:
                seen.update(model=context.model, seed=context.seed, cache=context.cache("x").path)
                return selflearn.component("scorer", "lexical")

            register("mine", make)

    selflearn.component("scorer", "mine", plugins=[Plugin()], model="m", seed=7, cache_dir=str(tmp_path))
    assert seen["model"] == "m" and seen["seed"] == 7 and seen["cache"].startswith(str(tmp_path))


def test_import_selflearn_stays_free_of_torch() -> None:
    code = "import sys, selflearn; selflearn.component; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
