"""The reproduction's configs (examples/reproduction, docs/results.md) stay valid: every arm
builds a pipeline whose stages validate, with the arm's settings and the seed in place."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from selflearn import Pipeline

HERE = Path(__file__).resolve().parents[2] / "examples" / "reproduction"


def _driver() -> Any:
    spec = importlib.util.spec_from_file_location("reproduce", HERE / "reproduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merge_is_deep_and_copies() -> None:
    merge = _driver().merge
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    out = merge(base, {"a": {"b": 5}, "e": {"f": 1}})
    assert out == {"a": {"b": 5, "c": [1]}, "d": 2, "e": {"f": 1}}
    out["a"]["c"].append(2)
    assert base["a"]["c"] == [1]


@pytest.mark.parametrize("arm", ["dpo-unfiltered", "dpo-tau0.5", "dpo-tau0.8", "dpo-random285"])
def test_every_arm_validates(arm: str, tmp_path: Path) -> None:
    driver = _driver()
    base = yaml.safe_load((HERE / "base.yaml").read_text())
    arms = yaml.safe_load((HERE / "arms.yaml").read_text())
    assert set(arms) == {"dpo-unfiltered", "dpo-tau0.5", "dpo-tau0.8", "dpo-random285"}
    cfg = driver.arm_config(base, arms[arm], str(tmp_path), arm, 3)
    assert cfg["run_dir"] == os.path.join(str(tmp_path), arm, "seed3")
    assert cfg["train"]["seed"] == 3 and cfg["seed"] == 42
    assert cfg["cache_dir"] == os.path.join(str(tmp_path), "cache")
    pipe = Pipeline.from_config(cfg, load_entry_points=False)
    try:
        plan = pipe.plan()  # validates every stage
        assert [row["stage"] for row in plan][-3:] == ["datasets", "train", "evaluate"]
        datasets = pipe.stage("datasets").options
        if arm in ("dpo-unfiltered", "dpo-random285"):
            assert not datasets.consistency_filter and not datasets.knowledge_filter
            assert datasets.max_questions == (285 if arm == "dpo-random285" else None)
        else:
            assert datasets.tau_k == float(arm.removeprefix("dpo-tau")) and datasets.knowledge_filter
        assert pipe.stage("train").options.seed == 3
        assert dict(pipe.stage("evaluate").evaluators())["detection"].options.k == 10
    finally:
        pipe.close()


def _run(arm: str, seed: int, base: float, cand: float, pairs: int) -> dict[str, Any]:
    qa = {"contains": 0.1, "exact": 0.0, "f1": 0.2}
    return {"arm": arm, "seed": seed, "dpo_pairs": pairs,
            "baseline": {"test_disagreement": base, "qa:trivia": qa},
            "candidate": {"test_disagreement": cand, "qa:trivia": {**qa, "contains": 0.1 + cand}},
            "detection": {"sets": {"trivia": {"wrong_rate": 0.8, "scorers": {"lexical": {"auroc": 0.6 + seed / 100}}}}}}


def test_table_means_spreads_and_paired_deltas(tmp_path: Path) -> None:
    driver = _driver()
    runs = {f"{a}/seed{s}": _run(a, s, 0.8 + s / 100, c + s / 100, n)
            for a, c, n in (("dpo-a", 0.5, 100), ("dpo-b", 0.7, 10)) for s in (1, 2, 3)}
    tab = driver.table({"runs": runs, "data": {}}, ["dpo-a", "dpo-b"])
    rows, delta = tab["rows"], tab["delta"]
    assert list(rows) == ["sft-only", "dpo-a", "dpo-b"]
    assert rows["sft-only"]["test_disagreement"]["mean"] == pytest.approx(0.82)
    assert rows["dpo-a"]["test_disagreement"]["mean"] == pytest.approx(0.52)
    assert rows["dpo-a"]["test_disagreement"]["sd"] == pytest.approx(0.01)
    assert rows["dpo-b"]["dpo_pairs"]["mean"] == 10
    # candidate minus its own baseline, seed by seed: constant, so no spread
    assert delta["dpo-b"]["test_disagreement"]["mean"] == pytest.approx(-0.1)
    assert delta["dpo-b"]["test_disagreement"]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert tab["detection"]["trivia"]["lexical"]["mean"] == pytest.approx(0.62)
    md = driver.markdown(tab, {"runs": runs})
    assert "| dpo-b | 10 ± 0 | 0.720 ± 0.010 |" in md and "Change against" in md
    out = driver.plots(tab, str(tmp_path))
    assert Path(out[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
