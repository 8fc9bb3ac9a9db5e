"""Knowledge-detection quality: the AUROC arithmetic, and the evaluate stage's ``detection``
option end to end with a backend that knows some answers and guesses at the others."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from selflearn import Pipeline
from selflearn.builtin.evaluation.detection import auroc, auroc_ci, is_wrong, roc_curve
from selflearn.builtin.evaluation.loaders import load_qa
from selflearn.core.errors import ConfigError
from selflearn.core.hookspecs import hookimpl
from selflearn.core.protocols import BackendCapabilities, GenerationParams, Prompt
from selflearn.core.records import Completion
from tests.evaluation.conftest import write_run


def _pairs_auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The definition: P(score of a positive > score of a negative), ties counting half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_the_pairwise_definition_with_ties() -> None:
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) if rng.random() < 0.5 else rng.random() for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        if all(labels) or not any(labels):
            assert auroc(scores, labels) is None
            continue
        assert auroc(scores, labels) == pytest.approx(_pairs_auroc(scores, labels))
        # the area under the curve's points is the same number (trapezoids handle the ties)
        pts = roc_curve(scores, labels)
        area = sum((x2 - x1) * (y1 + y2) / 2 for (x1, y1), (x2, y2) in zip(pts, pts[1:], strict=False))
        assert area == pytest.approx(_pairs_auroc(scores, labels))
        assert pts[0] == (0.0, 0.0) and pts[-1] == pytest.approx((1.0, 1.0))


def test_auroc_extremes_interval_and_errors() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5] * 4, [False, True, False, True]) == 0.5
    with pytest.raises(ValueError, match="differ in length"):
        auroc([0.1], [True, False])
    rng = random.Random(0)
    labels = [i % 3 == 0 for i in range(60)]
    scores = [rng.random() + (0.4 if y else 0.0) for y in labels]
    ci = auroc_ci(scores, labels, resamples=300, seed=1)
    assert ci["ci_low"] <= ci["auroc"] <= ci["ci_high"] and ci["ci_high"] - ci["ci_low"] < 0.5
    assert ci == auroc_ci(scores, labels, resamples=300, seed=1)
    assert auroc_ci([0.1, 0.2], [True, True])["auroc"] is None
    assert is_wrong({"contains": 0.0, "exact": 0.0, "f1": 0.4}, "contains")
    assert not is_wrong({"contains": 1.0, "exact": 0.0, "f1": 0.4}, "contains")
    assert is_wrong({"contains": 1.0, "exact": 0.0, "f1": 0.4}, "f1")


QA_SET = "trivia:worldcapitals"


@attrs.frozen
class GuessOptions:
    model: str = "sft-model"


class GuessingBackend:
    """Knows the gold answer of every other QA question; guesses (differently per sample) at
    the rest, and answers greedily with a wrong city there."""

    capabilities = BackendCapabilities(chat=True, raw=False, seed=True)
    gold: dict[str, str] = {}

    def __init__(self, options: GuessOptions) -> None:
        self.options = options

    def identity(self) -> dict[str, Any]:
        return {"backend": "guessing", "model": self.options.model}

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        out = []
        for p in prompts:
            user = [m["content"] for m in p if m["role"] == "user"][-1].strip()  # type: ignore[index]
            known = self.gold.get(user)
            row = []
            for i in range(n):
                if known is not None:
                    text = f"The answer is {known}."
                elif params.temperature == 0.0:
                    text = "The answer is Atlantis."
                else:
                    text = f"Maybe it is Town{sample_offset + i} of region {i * 7}."
                row.append(Completion(text=text, completion_tokens=5))
            out.append(row)
        return out

    def close(self) -> None:
        pass


class GuessingPlugin:
    @hookimpl
    def register_inference_backends(self, register: Any) -> None:
        register("guessing", lambda options, ctx: GuessingBackend(options), options=GuessOptions)


def _config(run_dir: str, detection: dict[str, Any]) -> dict[str, Any]:
    return {"run_dir": run_dir, "backend": "guessing", "scorer": "lexical",
            "evaluate": {"qa": [QA_SET], "qa_limit": 12, "detection": detection, "known_items": 0}}


def test_detection_through_the_stage(run_dir: str) -> None:
    items, _ = load_qa(QA_SET)
    GuessingBackend.gold = {x.question: x.answers[0] for i, x in enumerate(sorted(items, key=lambda x: x.id))
                            if i % 2 == 0}
    root = write_run(run_dir)
    cfg = _config(run_dir, {"k": 4, "scorers": ["lexical", {"use": "lexical", "options": {"lowercase": False}}]})
    pipe = Pipeline(cfg, plugin_objects=[GuessingPlugin()], load_entry_points=False)
    summary = pipe.stage("evaluate").run()
    pipe.close()
    ev = root / "evaluation"
    rows = [json.loads(line) for line in (ev / "detection.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["samples"]) == 4 for r in rows)
    assert {r["set"] for r in rows} == {QA_SET}
    # wrong answers are exactly the guessed ones, and only they disagree with their samples
    assert any(r["wrong"] for r in rows) and not all(r["wrong"] for r in rows)
    for r in rows:
        assert r["wrong"] == (r["question"] not in GuessingBackend.gold)
        assert set(r["s_k"]) == {"lexical", "lexical'", "lexical(lowercase=False)"}
        assert (r["s_k"]["lexical"] > 0.5) == r["wrong"]
    report = json.loads((ev / "report.json").read_text())
    det = report["detection"]
    assert det["k"] == 4 and det["scorers"] == ["lexical", "lexical'", "lexical(lowercase=False)"]
    entry = det["sets"][QA_SET]
    assert entry["n"] == 12 and entry["scorers"]["lexical"]["auroc"] == 1.0
    assert entry["wrong_rate"] == pytest.approx(sum(r["wrong"] for r in rows) / 12)
    assert summary["detection_auroc"][QA_SET]["lexical"] == 1.0
    assert (ev / "detection_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Knowledge detection" in (root / "report.md").read_text()
    cache = Path(run_dir) / "cache" / "evaluate-detection.jsonl"
    lines = len(cache.read_text().splitlines())
    pipe = Pipeline(cfg, plugin_objects=[GuessingPlugin()], load_entry_points=False)
    pipe.stage("evaluate").run()
    pipe.close()
    assert len(cache.read_text().splitlines()) == lines  # scores come from the cache


def test_detection_errors(run_dir: str) -> None:
    write_run(run_dir)
    base = {"run_dir": run_dir, "backend": "echo", "scorer": "lexical"}
    with pytest.raises(ConfigError, match="needs QA sets"):
        Pipeline({**base, "evaluate": {"detection": {"k": 3}}}, load_entry_points=False).stage("evaluate").validate()
    with pytest.raises(ConfigError, match="at least 2"):
        Pipeline({**base, "evaluate": {"qa": [QA_SET], "detection": {"k": 1}}},
                 load_entry_points=False).stage("evaluate").validate()
    with pytest.raises(ConfigError, match=r"detection.scorers\[0\]"):
        Pipeline({**base, "evaluate": {"qa": [QA_SET], "detection": {"scorers": [{"options": {}}]}}},
                 load_entry_points=False).stage("evaluate").validate()


def test_roc_plot_says_why_a_panel_has_no_curve() -> None:
    """A QA set whose answers are all right has no ROC curve: the panel says so (no legend of
    nothing, which matplotlib warns about), and the other panel still draws its curve."""
    import warnings

    from selflearn.builtin.evaluation.detection import plot_roc

    rows = [{"set": "trivia", "wrong": False, "s_k": {"nli": v}} for v in (0.1, 0.4, 0.8)]
    rows += [{"set": "fanout", "wrong": w, "s_k": {"nli": v}} for w, v in ((True, 0.9), (False, 0.2), (True, 0.6))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = plot_roc(rows, ["nli"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
