"""The dry-run tells the truth (issue 23): it names every stage's components and models,
forecasts counts from the configuration before upstream files exist (marked as estimates),
subtracts what the per-call cache holds, prices priced components, and its count of
generation calls equals the calls the following run makes -- cold, warm and half warm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.builtin.backends.echo import EchoBackend, Options
from selflearn.cli import main
from selflearn.core.plan import totals

from .test_rerun import CountingEcho


def _corpus(root: Path, n: int = 4) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"doc{i}.md").write_text(
            f"# Topic {i}\n\nTopic {i} was founded in {1900 + i} by Ada Lovelace. It lies near "
            f"Lake Geneva and hosts {i + 2} museums.\n"
        )
    return str(root)


def _config(tmp_path: Path, backend: Any, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "run_dir": str(tmp_path / "run"),
        "source": {"use": "files", "options": {"url": _corpus(tmp_path / "corpus")}},
        "chunker": {"use": "sentences", "options": {"max_tokens": 64}},
        "question_generator": "template",
        "backend": backend,
        "scorer": "lexical",
        "generations": {"k": 2},
        # one self-labelling attempt: the dry-run's count is then exact, not a range
        "datasets": {"self_label": "on", "self_label_retries": 1},
    }
    config.update(overrides)
    return config


def _planned(config: dict[str, Any]) -> dict[str, Any]:
    return totals(Pipeline(config).plan(until="datasets"))


def _made(config: dict[str, Any], counter: list[int]) -> int:
    before = counter[0]
    Pipeline(config).run(until="datasets")
    return counter[0] - before


def test_dry_run_call_count_equals_the_run_cold_half_warm_and_warm(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
    counter = [0]
    config = _config(tmp_path, CountingEcho(counter))
    Pipeline(config).run(until="questions")  # no model call (template questions)

    cold = _planned(config)
    assert not cold["estimated"] and cold["cached"] == 0 and cold["to_make"] > 0
    assert cold["to_make"] == _made(config, counter)

    # K from 2 to 3: only the third samples are new, the rest is in the cache
    config["generations"] = {"k": 3}
    half = _planned(config)
    assert half["cached"] == cold["total"] and half["to_make"] == 4 * 2  # 4 questions, 2 new samples
    assert half["to_make"] == _made(config, counter)

    # forced again: everything is in the cache, the dry-run says so and the run makes nothing
    warm = totals(Pipeline(config).plan(until="datasets", rerun="generations"))
    assert warm["to_make"] == 0 and warm["cached"] == warm["total"] > 0
    Pipeline(config).run(until="datasets", rerun="generations")
    assert counter[0] == cold["to_make"] + half["to_make"]


def test_fresh_run_dir_is_exact_when_no_stage_before_the_model_calls_a_model(tmp_path, monkeypatch):
    """files source, sentences chunker and template questions make no model call: the dry-run
    runs them in memory, so even before any file exists its count is the run's."""
    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
    counter = [0]
    config = _config(tmp_path, CountingEcho(counter))
    rows = {r["stage"]: r for r in Pipeline(config).plan(until="datasets")}
    assert not (tmp_path / "run" / "documents.jsonl").exists()  # nothing written
    assert rows["documents"]["rehearsed"] and rows["documents"]["estimate"] == {"documents": {"train": 4, "test": 0}}
    assert rows["questions"]["rehearsed"] and not rows["generations"]["estimated"]
    planned = totals(list(rows.values()))
    assert not planned["estimated"] and planned["to_make"] == _made(config, counter) > 0


def test_forecast_from_the_configuration_is_marked_and_bounds_the_run(tmp_path, monkeypatch):
    """A source that may not be run by a dry-run (it could download or call a model): the
    counts are forecast from its size_hint() and the options, marked, and bound the run."""
    from selflearn import Document

    class Remote:
        def documents(self):
            for i in range(4):
                yield Document(id=f"d{i}", title=f"T{i}",
                               text=f"Topic {i} was founded in {1900 + i} by Ada Lovelace. It lies near Lake Geneva.")

        def size_hint(self):
            return {"train": 4, "test": 0}

    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
    counter = [0]
    config = _config(tmp_path, CountingEcho(counter), source=Remote())
    rows = {r["stage"]: r for r in Pipeline(config).plan(until="datasets")}
    assert rows["documents"]["estimate"] == {"documents": {"train": 4, "test": 0}}
    for name in ("passages", "questions", "generations", "scores", "datasets"):
        assert rows[name]["estimated"] and rows[name]["estimate"] and not rows[name].get("rehearsed"), name
    # passages at most 8 per document, one question each, 1 + 2 + 2 generations per question
    assert rows["generations"]["estimate"]["generations"] == 4 * 8 * 5
    planned = totals(list(rows.values()))
    assert planned["estimated"] and planned["to_make"] >= _made(config, counter) > 0


def test_components_models_and_cost_of_a_priced_backend(tmp_path):
    backend = {"use": "openai", "options": {
        "base_url": "http://127.0.0.1:9/v1", "model": "served-model", "api_key_env": "",
        "price_input_per_mtok": 1.5, "price_output_per_mtok": 6.0,
    }}
    config = _config(tmp_path, backend, generations={"k": 2, "reference": {"max_new_tokens": 20},
                     "with_passage": {"max_new_tokens": 20}, "without_passage": {"max_new_tokens": 20}},
                     datasets={"self_label": "off"})
    Pipeline(config).run(until="questions")
    rows = {r["stage"]: r for r in Pipeline(config).plan(until="datasets")}
    gen = rows["generations"]
    assert gen["components"]["backend"]["use"] == "openai"
    assert gen["components"]["backend"]["model"] == "served-model"
    assert gen["components"]["backend"]["options"]["price_input_per_mtok"] == 1.5
    assert rows["scores"]["components"] == {"scorer": {"use": "lexical"}}
    calls = gen["calls"]
    assert calls["completion_tokens_max"] == calls["to_make"] * 20 and calls["prompt_tokens"] > 0
    assert gen["cost_usd"] == pytest.approx((calls["prompt_tokens"] * 1.5 + calls["to_make"] * 20 * 6.0) / 1e6)
    assert rows["scores"]["cost_usd"] is None  # nothing priced there


def test_cli_dry_run_names_models_and_marks_exact_counts(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    import json

    config.write_text(json.dumps({**_config(tmp_path, {"use": "echo", "options": {"model": "my-echo"}}),
                                  "run_dir": str(tmp_path / "run")}))
    assert main(["run", str(config), "--until", "datasets", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "backend: echo (model my-echo)" in out and "scorer: lexical" in out
    assert "counts (exact: rehearsed in memory, no model call): documents: {'train': 4, 'test': 0}" in out
    # 4 questions x (1 + 2 + 2) generations, 3 self-labels (the other third are RC rows)
    assert "generation calls to make: 23 (0 of 23 in the cache)\n" in out
    assert not (tmp_path / "run" / "documents.jsonl").exists()  # a dry-run runs nothing


def test_paper_flow_dry_run_names_the_sft_model(tmp_path):
    config = _config(tmp_path, {"use": "echo"}, flow="paper", model="base/model", sft_trainer="trl-sft")
    rows = {r["stage"]: r for r in Pipeline(config).plan()}
    assert list(rows) == ["documents", "passages", "questions", "sft", "sft_model", "generations", "scores",
                          "datasets", "train", "evaluate"]
    assert set(rows["sft"]["components"]) == {"backend"}  # the base model labels the rows
    assert rows["sft_model"]["components"]["sft_trainer"] == {"use": "trl-sft", "model": "base/model"}
    assert rows["sft_model"]["estimate"]["trainings"] == ["sft"]
    sft = str(tmp_path / "run" / "models" / "sft")
    assert rows["generations"]["components"]["backend"]["model"] == f"{sft} (G_SFT, from the sft_model stage)"
    assert rows["generations"]["estimated"]
    # DPO starts from G_SFT; the evaluation compares the DPO model with G_SFT
    assert rows["train"]["components"]["trainer"]["model"] == f"{sft} (the SFT model)"
    assert rows["evaluate"]["components"]["backend"]["model"] == (
        f"candidate {tmp_path / 'run' / 'models' / 'dpo'} vs baseline {sft} (the SFT model)")


def test_echo_backend_object_is_named(tmp_path):
    rows = Pipeline(_config(tmp_path, EchoBackend(Options()))).plan(until="generations")
    assert rows[-1]["components"]["backend"] == {"object": "selflearn.builtin.backends.echo.EchoBackend"}


def test_evaluation_calls_are_counted_against_the_cache_for_both_models(tmp_path, monkeypatch):
    """Once train.json names the models, the evaluation's calls (both models' closed-book
    answers and the evaluators' requests: passage-grounded references, detection samples)
    are listed and looked up in the cache: the count is the run's, cold and warm."""
    from selflearn.core.plan import exact_calls
    from tests.evaluation.conftest import write_run

    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
    run_dir = str(tmp_path / "run")
    write_run(run_dir)
    cache = Path(run_dir) / "cache" / "generations.jsonl"

    def lines() -> int:
        return sum(1 for _ in cache.open()) if cache.exists() else 0

    config = {"run_dir": run_dir, "backend": {"use": "echo"}, "scorer": "lexical",
              "evaluate": {"max_new_tokens": 16, "bootstrap_resamples": 20, "qa": ["trivia:worldcapitals"],
                           "qa_limit": 3, "detection": {"k": 2}}}
    for expected_cached in (False, True):
        pipe = Pipeline(config, load_entry_points=False)
        planned = exact_calls(pipe.stage("evaluate"))
        before = lines()
        pipe.stage("evaluate").run()
        pipe.close()
        assert planned is not None and planned["to_make"] == lines() - before
        assert (planned["to_make"] == 0) == expected_cached and planned["total"] > 0
