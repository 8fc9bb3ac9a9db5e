"""The evaluate stage end to end on hand-written run files, with the echo backend and with a
scripted backend whose trained model knows facts its baseline does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import ConfigError, StageError
from selflearn.core.evaluation import pair_answers
from tests.evaluation.conftest import ScriptedBackend, scripted_judge_answer, write_run
from tests.servers import FakeServer, openai_handler


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cache_lines(root: Path, name: str) -> int:
    path = root / "cache" / f"{name}.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_echo_end_to_end_and_rerun_makes_no_calls(run_dir: str) -> None:
    root = write_run(run_dir)
    cfg = {"run_dir": run_dir, "backend": "echo", "scorer": "lexical",
           "evaluate": {"qa": ["trivia:worldcapitals"], "qa_limit": 5, "max_new_tokens": 64}}
    pipe = Pipeline(cfg, load_entry_points=False)
    summary = pipe.stage("evaluate").run()
    pipe.close()
    ev = root / "evaluation"
    base, cand = _rows(ev / "answers_baseline.jsonl"), _rows(ev / "answers_candidate.jsonl")
    assert [r["set"] for r in base].count("test") == 4
    assert [r["set"] for r in base].count("known") == 2  # k1, k2 have S_K <= 0.5; u1 does not
    assert {r["question_id"] for r in base if r["set"] == "known"} == {"k1", "k2"}
    assert [r["set"] for r in base].count("qa:trivia:worldcapitals") == 5
    assert {r["model"] for r in base} == {"sft-model"} and {r["model"] for r in cand} == {"dpo-model"}
    qa_row = next(r for r in cand if r["set"].startswith("qa:"))
    assert set(qa_row["qa"]) == {"exact", "f1", "contains"} and qa_row["gold"]
    refs = _rows(ev / "references.jsonl")
    assert len(refs) == 6 and refs[0]["model"] == "sft-model"
    # echo answers the closed-book question with the question itself: scored against the
    # reference (the passage's first sentence) by the lexical scorer
    assert all(r["disagreement"] is not None for r in base if r["set"] in ("test", "known"))
    report = json.loads((ev / "report.json").read_text())
    assert set(report) >= {"models", "params", "items", "test", "known", "qa", "judge", "forgetting"}
    assert report["models"] == {"baseline": "sft-model", "candidate": "dpo-model"}
    assert report["judge"] is None and report["forgetting"] is None
    assert set(report["test"]["disagreement"]) >= {"baseline", "candidate", "difference"}
    assert set(report["test"]["by_category"]) == {"Geography", "Arts"}
    assert report["qa"]["trivia:worldcapitals"]["n"] == 5
    assert (ev / "before_after.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (root / "report.md").read_text()
    assert "evaluation/before_after.png" in md and "trivia:worldcapitals" in md
    assert summary["test_questions"] == 4 and "test_disagreement" in summary
    stage = Pipeline(cfg, load_entry_points=False).stage("evaluate")
    assert all((root / f).exists() for f in stage.outputs())
    assert "evaluation/verdicts.jsonl" not in stage.outputs()

    gens, agreement = _cache_lines(root, "generations"), _cache_lines(root, "evaluate-agreement")
    assert gens == 2 * (4 + 2 + 5) + 6
    pipe = Pipeline(cfg, load_entry_points=False)
    pipe.stage("evaluate").run()
    pipe.close()
    assert _cache_lines(root, "generations") == gens
    assert _cache_lines(root, "evaluate-agreement") == agreement
    assert _rows(ev / "answers_candidate.jsonl") == cand


def test_scripted_models_with_local_judge(run_dir: str, scripted_plugin: Any) -> None:
    root = write_run(run_dir)
    # a manifest and a datasets summary as the earlier stages would leave them
    (root / "manifest.json").write_text(json.dumps({"stages": {
        "questions": {"summary": {"questions": 3, "test_questions": 4}},
        "scores": {"summary": {"scored": 3}}}}))
    (root / "datasets_summary.json").write_text(json.dumps({"kept": 1, "removed": {"consistency": 0, "knowledge": 2}}))
    (root / "scores_hist.png").write_bytes(b"\x89PNG fake")
    cfg = {"run_dir": run_dir, "backend": "scripted", "scorer": "lexical", "judge": "local",
           "evaluate": {"bootstrap_resamples": 200}}
    pipe = Pipeline(cfg, plugin_objects=[scripted_plugin], load_entry_points=False)
    summary = pipe.stage("evaluate").run()
    # each evaluated model's backend was closed after use (the judge's is the pipeline's)
    assert ScriptedBackend.closed == ["sft-model", "dpo-model"]
    pipe.close()
    ev = root / "evaluation"
    verdicts = {v["question_id"]: v for v in _rows(ev / "verdicts.jsonl")}
    # t1, t2: the trained model states the passage's fact -> win; t3: only the baseline does
    # -> lose; t4: neither does, the position-biased judge says "A" in both orders -> tie
    assert {q: v["outcome"] for q, v in verdicts.items()} == {"t1": "win", "t2": "win", "t3": "lose", "t4": "tie"}
    report = json.loads((ev / "report.json").read_text())
    overall = report["judge"]["test"]["overall"]
    assert (overall["win"], overall["tie"], overall["lose"], overall["unjudged"]) == (2, 1, 1, 0)
    assert overall["win_rate"] == 0.5
    assert report["judge"]["test"]["by_category"]["Arts"]["lose"] == 1
    known = {v["question_id"]: v["outcome"] for v in _rows(ev / "verdicts_known.jsonl")}
    assert known["k1"] == "lose"  # the trained model's terser answer shares fewer passage words
    assert report["judge"]["known"]["overall"]["lose_rate"] == pytest.approx(
        sum(o == "lose" for o in known.values()) / len(known))
    diff = report["test"]["disagreement"]
    assert diff["candidate_closer"] == 2 and diff["baseline_closer"] == 1
    assert summary["judge"] == {"win": 2, "tie": 1, "lose": 1, "unjudged": 0,
                                "known_lose_rate": report["judge"]["known"]["overall"]["lose_rate"]}
    assert (ev / "outcomes.png").read_bytes()[:4] == b"\x89PNG"
    md = (root / "report.md").read_text()
    for part in ("| questions | test_questions | 4 |", "| datasets | removed.knowledge | 2 |",
                 "![S_L / S_K histogram](scores_hist.png)", "evaluation/outcomes.png",
                 "Losing rate on known items", "| test: all | 4 | 4 | 0 |"):
        assert part in md, part


def test_openai_judge_server_through_the_stage(run_dir: str, scripted_plugin: Any) -> None:
    root = write_run(run_dir)

    def respond(body: dict[str, Any], i: int) -> str:
        return scripted_judge_answer(body["messages"][-1]["content"])

    with FakeServer(openai_handler(respond, model="judge-4")) as server:
        cfg = {"run_dir": run_dir, "backend": "scripted", "scorer": "lexical", "judge": {
            "use": "openai", "options": {"base_url": server.url + "/v1", "model": "judge-4",
                                         "backoff": 0.01, "price_input_per_mtok": 1.0}},
               "evaluate": {"known_items": 0, "agreement": False}}
        pipe = Pipeline(cfg, plugin_objects=[scripted_plugin], load_entry_points=False)
        pipe.stage("evaluate").run()
        pipe.close()
        assert len(server.requests) == 8  # 4 test items x 2 orders
        report = json.loads((root / "evaluation" / "report.json").read_text())
        overall = report["judge"]["test"]["overall"]
        assert (overall["win"], overall["tie"], overall["lose"]) == (2, 1, 1)
        assert report["judge"]["usage"]["requests"] == 8 and report["judge"]["usage"]["cost_usd"] > 0
        assert not (root / "evaluation" / "references.jsonl").exists()
        assert "Judge calls made by this run (cached ones are free): 8" in (root / "report.md").read_text()
        pipe = Pipeline(cfg, plugin_objects=[scripted_plugin], load_entry_points=False)
        pipe.stage("evaluate").run()  # the judge cache answers: no new request
        pipe.close()
        assert len(server.requests) == 8


def test_baseline_is_the_base_model_without_sft_and_options_override(run_dir: str) -> None:
    write_run(run_dir, train_json={"base_model": "base-model", "models": {"sft": None, "dpo": "dpo-model"}})
    pipe = Pipeline({"run_dir": run_dir, "backend": "echo", "scorer": "lexical"}, load_entry_points=False)
    assert pipe.stage("evaluate")._models() == ("dpo-model", "base-model")
    pipe = Pipeline({"run_dir": run_dir, "backend": "echo", "evaluate": {
        "candidate_model": "x", "baseline_model": "y"}}, load_entry_points=False)
    assert pipe.stage("evaluate")._models() == ("x", "y")


def test_errors(run_dir: str) -> None:
    write_run(run_dir, train_json={"base_model": "b", "models": {}})
    pipe = Pipeline({"run_dir": run_dir, "backend": "echo", "scorer": "lexical"}, load_entry_points=False)
    with pytest.raises(StageError, match="models.dpo"):
        pipe.stage("evaluate").run()
    with pytest.raises(ConfigError, match="backend must be given by name"):
        Pipeline({"run_dir": run_dir, "backend": ScriptedBackend(None)},  # type: ignore[arg-type]
                 load_entry_points=False).stage("evaluate").validate()
    with pytest.raises(ConfigError, match=r"evaluate.qa\[0\].*unknown QA set"):
        Pipeline({"run_dir": run_dir, "backend": "echo", "evaluate": {"qa": ["squad"]}},
                 load_entry_points=False).stage("evaluate").validate()


def test_openai_judge_without_key_fails_before_any_work(run_dir: str, monkeypatch: Any) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write_run(run_dir)
    cfg = {"run_dir": run_dir, "backend": "echo", "scorer": "lexical", "judge": "openai"}
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        Pipeline(cfg, load_entry_points=False).stage("evaluate").validate()
    cfg["judge"] = {"use": "openai", "options": {"base_url": "http://127.0.0.1:9/v1"}}
    Pipeline(cfg, load_entry_points=False).stage("evaluate").validate()  # local servers need none
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    cfg["judge"] = "openai"
    Pipeline(cfg, load_entry_points=False).stage("evaluate").validate()


def test_answer_sets_must_match() -> None:
    base = [{"set": "test", "question_id": q, "answer": ""} for q in ("a", "b", "c")]
    cand = [{"set": "test", "question_id": q, "answer": ""} for q in ("a", "d")]
    with pytest.raises(StageError) as err:
        pair_answers(base, cand)
    msg = str(err.value)
    assert "missing from the candidate's answers: test:b, test:c" in msg
    assert "missing from the baseline's answers: test:d" in msg
    pairs = pair_answers(base, list(reversed(base)))
    assert [b["question_id"] for b, _ in pairs] == ["a", "b", "c"]


def test_hf_backend_on_a_tiny_model(run_dir: str, tiny_llama: str) -> None:
    """The real path: the hf backend loads each model by path (here the same tiny random
    checkpoint twice), answers greedily, and a re-run answers from the cache."""
    root = write_run(run_dir, train_json={"base_model": tiny_llama, "models": {"sft": None, "dpo": tiny_llama}})
    cfg = {"run_dir": run_dir, "backend": {"use": "hf", "options": {"device": "cpu"}}, "scorer": "lexical",
           "evaluate": {"max_new_tokens": 8, "known_items": 1}}
    pipe = Pipeline(cfg, load_entry_points=False)
    pipe.stage("evaluate").run()
    pipe.close()
    base = _rows(root / "evaluation" / "answers_baseline.jsonl")
    cand = _rows(root / "evaluation" / "answers_candidate.jsonl")
    assert len(base) == 5 and all(0 < r["completion_tokens"] <= 8 for r in base)
    assert [r["answer"] for r in base] == [r["answer"] for r in cand]  # same weights, greedy
    gens = _cache_lines(root, "generations")
    pipe = Pipeline(cfg, load_entry_points=False)
    pipe.stage("evaluate").run()
    pipe.close()
    assert _cache_lines(root, "generations") == gens
