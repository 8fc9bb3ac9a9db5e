"""Issue 20's measurement driver (examples/reproduction/epochs_rounds.py) on the tiny random Llama.

Both parts run end to end for one seed, and what the comparisons rest on is checked on the
artifacts: (A) every arm trains a fixed number of epochs of its own pairs from the same SFT
model, and the random arm has as many questions as the filtered arm kept; (B) one round and two
rounds train the same number of DPO steps in all, and both are compared with the original
model on the same held-out questions. The configs it builds from the real base.yaml validate.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from selflearn import Pipeline
from selflearn.core.config import default_config, merge

from .test_rounds import QuestionHashScorer  # S_L = S_K = a hash of the question

HERE = Path(__file__).resolve().parents[2] / "examples" / "reproduction"


def _driver() -> Any:
    spec = importlib.util.spec_from_file_location("epochs_rounds", HERE / "epochs_rounds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through it
    spec.loader.exec_module(module)
    return module


def _base(model: str) -> dict[str, Any]:
    """The tiny run: template questions, the consistency filter on but open (tau_L = 1), so
    the filtered arm is the knowledge filter's choice (about half of the questions)."""
    return merge(default_config(), {
        "model": model,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History", "Geography"], "train_per_category": 5, "test_per_category": 1,
            "min_words": 40}},
        "question_generator": "template",
        "scorer": QuestionHashScorer(),
        "generations": {"k": 2, "reference": {"max_new_tokens": 8},
                        "with_passage": {"max_new_tokens": 8}, "without_passage": {"max_new_tokens": 8}},
        "datasets": {"tau_l": 1.0, "tau_k": 0.5, "truncated_samples": "keep",
                     "drop_truncated_reference": False, "self_label": "off"},
        "sft_trainer": {"use": "trl-sft", "options": {"num_train_epochs": 1,
            "per_device_train_batch_size": 4, "max_length": 2048, "save_steps": 0}},
        "trainer": {"use": "trl-dpo", "options": {"learning_rate": 5.0e-5,
            "per_device_train_batch_size": 2, "max_prompt_length": 64, "max_length": 128, "save_steps": 0}},
        "evaluate": {"max_new_tokens": 8, "known_items": 2, "qa": [], "bootstrap_resamples": 20},
    })


@pytest.mark.slow
def test_both_parts_train_paired_arms_and_report_them(tiny_llama, tmp_path, capsys):
    drv = _driver()
    root = str(tmp_path / "root")
    base = _base(tiny_llama)
    plan = drv.Plan(base, root, ("epochs", "rounds"), epochs=2.0, steps=4, filters="filtered")
    assert drv.run_all(plan, [1])
    drv.report(root, [1], {"epochs": 2.0, "steps": 4, "dpo_batch": 2})
    printed = capsys.readouterr().out
    results = json.loads(Path(root, "results", "results.json").read_text())
    runs = {r["arm"]: r for r in results["runs"]}
    assert set(runs) == {"filtered", "unfiltered", "random", "one-round", "two-rounds", "two-rounds: round 1"}

    # (A) fixed epochs: steps = ceil(pairs / batch) x 2 for every arm, not a fixed step count
    filtered, unfiltered, rand = runs["filtered"], runs["unfiltered"], runs["random"]
    assert 0 < filtered["kept_questions"] < unfiltered["kept_questions"] == 10
    assert rand["kept_questions"] == rand["dpo_pairs"] == filtered["kept_questions"]
    for r in (filtered, unfiltered, rand):
        assert r["dpo_steps"] == 2 * math.ceil(r["dpo_pairs"] / 2)
    sampled, kept = ({json.loads(line)["question_id"] for line in Path(r["run_dir"], "dpo_pairs.jsonl").read_text().splitlines()}
                     for r in (rand, filtered))
    assert sampled != kept  # a random sample, not the filtered arm's questions
    # one SFT model per seed: trained by the first arm, reused (not retrained) by the others
    sft = [json.loads(Path(r["run_dir"], "train.json").read_text()) for r in (filtered, unfiltered, rand)]
    assert [s["models"]["sft"] == os.path.join(r["run_dir"], "models", "sft")
            for s, r in zip(sft, (filtered, unfiltered, rand), strict=True)] == [True] * 3
    assert filtered["baseline"] == unfiltered["baseline"] == rand["baseline"]

    # (B) the same DPO steps in all; both compared with the original model
    one, two, first = runs["one-round"], runs["two-rounds"], runs["two-rounds: round 1"]
    assert one["steps_per_round"] == [4] and two["steps_per_round"] == [2, 2]
    assert one["models"]["baseline"] == two["models"]["baseline"] == first["models"]["baseline"] == tiny_llama
    assert two["models"]["candidate"].endswith(os.path.join("round-2", "models", "dpo"))
    # the same original model on the same held-out questions (the known items are each final
    # round's own training questions, so they differ)
    assert one["baseline"]["test_disagreement"] == two["baseline"]["test_disagreement"]
    assert not Path(one["run_dir"], "round-1", "models", "sft").exists()  # DPO only
    # round 1 of the two-round run had half the documents; round 2 its own half plus the unknown
    q1 = Path(two["run_dir"], "round-1", "questions.jsonl").read_text().splitlines()
    assert len(q1) == 5 and len(Path(one["run_dir"], "round-1", "questions.jsonl").read_text().splitlines()) == 10

    # the summary: paired change = candidate - baseline of the same run; every check holds
    change = results["summary"]["epochs"]["filtered"]["metrics"]["test_disagreement"]["change_per_seed"]["1"]
    assert change == pytest.approx(filtered["candidate"]["test_disagreement"] - filtered["baseline"]["test_disagreement"])
    assert len(results["checks"]) == 5 and all(c["ok"] for c in results["checks"]), results["checks"]
    assert "### (A) selection at a fixed number of epochs" in printed and "| two-rounds: change | 1 |" in printed
    assert Path(root, "results", "epochs_rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resumable: the same call again trains nothing; a passed deadline starts nothing
    stamp = Path(two["run_dir"], "round-2", "train.json").stat().st_mtime_ns
    assert drv.run_all(plan, [1])
    assert Path(two["run_dir"], "round-2", "train.json").stat().st_mtime_ns == stamp
    assert not drv.run_all(dataclasses.replace(plan, deadline=0.0), [2])
    assert not Path(drv.epochs_dir(root, "filtered", 2)).exists()


@pytest.mark.parametrize("arm", ["filtered", "unfiltered", "random", "one-round", "two-rounds"])
def test_the_configs_built_from_base_yaml_validate(arm: str, tmp_path: Path) -> None:
    drv = _driver()
    base = drv.load_base(str(HERE / "base.yaml"), str(HERE / "epochs_rounds.yaml"), [])
    assert base["source"]["options"]["train_per_category"] == 80 and base["evaluate"]["detection"] is None
    root = str(tmp_path)
    plan = drv.Plan(base, root, epochs=3.0, steps=40)
    if arm in drv.EPOCH_ARMS:
        cfg = drv.epochs_config(plan, arm, 2, kept=57 if arm == "random" else None)
    else:
        cfg = drv.rounds_config(plan, arm, 2)
    assert cfg["train"]["seed"] == 2 and cfg["seed"] == 42 and cfg["cache_dir"] == os.path.join(root, "cache")
    pipe = Pipeline.from_config(cfg, load_entry_points=False)
    try:
        pipe.plan()  # validates every stage (rounds: the shared documents step)
        datasets = pipe.stage("datasets").options
        trainer = cfg["trainer"]["options"]
        if arm in drv.EPOCH_ARMS:
            assert (trainer["max_steps"], trainer["num_train_epochs"]) == (-1, 3.0)
            assert datasets.knowledge_filter == datasets.consistency_filter == (arm == "filtered")
            assert datasets.max_questions == (57 if arm == "random" else None)
            assert cfg["sft_trainer"]["use"] == "trl-sft"
        else:
            count = drv.ROUND_ARMS[arm]
            assert pipe.rounds is not None and pipe.rounds.count == count
            assert pipe.rounds.passages == "fresh+unknown" and trainer["max_steps"] == 40 // count
            assert cfg["sft_trainer"] is None and datasets.knowledge_filter and datasets.tau_k == 0.5
    finally:
        pipe.close()
    with pytest.raises(SystemExit):
        drv.epochs_config(plan, "random", 2, kept=0)


def test_bad_arguments_exit_2() -> None:
    drv = _driver()
    for argv in (["--steps", "3"], ["--epochs", "0"]):
        with pytest.raises(SystemExit) as info:
            drv.main(argv)
        assert info.value.code == 2
    assert yaml.safe_load((HERE / "epochs_rounds.yaml").read_text())["name"] == "epochs-rounds"


def test_a_seed_worker_gets_the_same_settings_and_its_own_cache(tmp_path: Path) -> None:
    drv = _driver()
    args = drv._parser().parse_args(["--root", str(tmp_path), "--seeds", "1", "2", "--epochs", "4",
                                     "--steps", "6", "--parts", "rounds", "--set", "a.b=1",
                                     "--set", "c=[x, y]", "--jobs", "2"])
    argv = drv.worker_argv(args, 2, time.time() + 120)
    assert argv[:2] == [sys.executable, str(HERE / "epochs_rounds.py")]
    worker = drv._parser().parse_args(argv[2:])
    assert worker.worker and worker.seeds == [2] and worker.parts == ["rounds"] and worker.set == args.set
    assert (worker.epochs, worker.steps, worker.root, worker.config, worker.scale) == (
        4.0, 6, args.root, args.config, args.scale)
    assert 1.9 < worker.deadline_minutes <= 2.0
    # the worker's cache: a copy of the shared one, made once
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "generations.jsonl").write_text("x\n")
    path = drv.seed_cache(str(tmp_path), 2)
    (tmp_path / "cache" / "generations.jsonl").write_text("x\ny\n")
    assert drv.seed_cache(str(tmp_path), 2) == path
    assert Path(path, "generations.jsonl").read_text() == "x\n"


def test_the_epochs_check_counts_only_the_pairs_the_trainer_trains_on() -> None:
    """The trainer holds out eval_fraction of the pairs (5%, at least 2): on the GPU run the
    unfiltered arm's 391 pairs trained 371, 12 steps of 32 an epoch, 60 steps in 5 epochs; a
    check that counted all 391 (65 steps) reported a pairing failure that was not one."""
    drv = _driver()
    split = drv._eval_split({})
    assert split == {"fraction": 0.05, "min_rows": 2}
    assert drv._eval_split({"eval_fraction": 0.0})["fraction"] == 0.0
    row = {"part": "epochs", "arm": "unfiltered", "seed": 1, "dpo_pairs": 391, "dpo_steps": 60}
    assert drv.train_rows(391, split) == 371 and drv.train_rows(20, split) == 20  # 1 < 2: none held out
    assert drv.checks([row], 5.0, 32, split)[0]["ok"]
    assert not drv.checks([{**row, "dpo_steps": 65}], 5.0, 32, split)[0]["ok"]
    assert drv.checks([{**row, "dpo_steps": 65}], 5.0, 32, None)[0]["ok"]  # no split: every pair


def test_a_stopped_driver_stops_its_seed_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C, SIGTERM or an error in the parent of --jobs N: its seed workers stop too (left
    running, one would write its run directories while the resumed command starts another)."""
    import subprocess

    drv = _driver()
    monkeypatch.setattr(drv.rp, "run_data", lambda base, root: None)
    monkeypatch.setattr(drv, "worker_argv", lambda args, seed, deadline: [
        sys.executable, "-c", "import time; time.sleep(120)"])
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*a: Any, **k: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(*a, **k))
        return started[-1]

    def seed_cache(root: str, seed: int) -> str:
        if seed == 3:  # two workers are running by now
            raise KeyboardInterrupt
        return str(tmp_path)

    monkeypatch.setattr(drv.subprocess, "Popen", popen)
    monkeypatch.setattr(drv, "seed_cache", seed_cache)
    plan = drv.Plan(base={}, root=str(tmp_path))
    args = drv._parser().parse_args(["--seeds", "1", "2", "3", "--jobs", "3"])
    with pytest.raises(KeyboardInterrupt):
        drv.run_parallel(plan, args, 3)
    assert len(started) == 2 and all(p.returncode is not None for p in started)
