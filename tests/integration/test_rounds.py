"""Self-training in rounds (issue 20) on the tiny random Llama and real Wikipedia leads.

Round 2 must answer, score, train and evaluate with round 1's model (its fingerprint in every
generation record and cache key), train on its own slice of documents plus round 1's unknown
questions, name round 1's data, thresholds and model in its lineage, and stop early when its
filters keep too few pairs; a kill in round 2 resumes to the artifacts of an unkilled run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from selflearn import Pipeline
from selflearn.cli import main
from selflearn.core.config import default_config, merge
from selflearn.core.records import Generations, Question, Scores
from selflearn.core.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]


def _config(run_dir: Path, model: str, **overrides: Any) -> dict[str, Any]:
    """The reduced default run on the tiny model: template questions, filters off (a random
    model's answers are noise), 2 DPO steps, a small evaluation."""
    config = merge(default_config(), {
        "run_dir": str(run_dir),
        "model": model,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History", "Geography"], "train_per_category": 3, "test_per_category": 1,
            "min_words": 40}},
        "question_generator": "template",
        "generations": {"k": 2, "reference": {"max_new_tokens": 12},
                        "with_passage": {"max_new_tokens": 12}, "without_passage": {"max_new_tokens": 12}},
        "datasets": {"consistency_filter": False, "knowledge_filter": False, "truncated_samples": "keep",
                     "drop_truncated_reference": False},
        "trainer": {"use": "trl-dpo", "options": {
            "use_lora": True, "lora_r": 4, "lora_alpha": 8, "max_steps": 2, "learning_rate": 5.0e-5,
            "per_device_train_batch_size": 2, "max_prompt_length": 64, "max_length": 128, "save_steps": 0}},
        "evaluate": {"max_new_tokens": 12, "known_items": 2, "qa": [], "bootstrap_resamples": 50},
        "rounds": {"count": 2, "passages": "fresh+unknown"},
    })
    return merge(config, overrides)


def _records(path: Path, cls: Any) -> list[Any]:
    return ArtifactStore(str(path.parent)).read_records(path.name, cls)


class QuestionHashScorer:
    """A scorer whose score is a hash of the question: a random tiny model's answers all score
    1.0 with the real scorers, which would leave no known question to tell apart from the
    unknown ones that round 2 must carry over."""

    def identity(self) -> dict[str, Any]:
        return {"scorer": "question-hash"}

    def score(self, items: Any) -> list[Any]:
        import hashlib

        from selflearn.core.protocols import ScoreResult

        out = []
        for item in items:
            value = int(hashlib.sha256(item.question.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            out.append(ScoreResult(score=value, sample_scores=[value] * len(item.samples)))
        return out


def _assert_round_two_lineage(model2: Path, r1: Path, model1: str, original: str) -> None:
    """Round 2's model names round 1's data, thresholds and model in its lineage file and its
    model card: what lets a reader of the model alone trace it back through the rounds."""
    lineage = json.loads((model2 / "selflearn-lineage.json").read_text())
    rounds = lineage["lineage"]["rounds"]
    assert rounds["round"] == 2 and rounds["model"] == model1 and rounds["original_model"] == original
    (earlier,) = rounds["earlier"]
    assert earlier["model"] == model1
    assert earlier["data"]["hash"] == ArtifactStore(str(r1)).hash("dpo_pairs.jsonl")
    assert earlier["thresholds"]["tau_k"] == 0.5
    card = (model2 / "README.md").read_text()
    assert "## Self-training rounds" in card and earlier["data"]["hash"] in card and model1 in card


def test_two_rounds_train_the_previous_rounds_model(tiny_llama, tmp_path):
    run = tmp_path / "run"
    outcomes = Pipeline(_config(run, tiny_llama, scorer=QuestionHashScorer())).run()
    assert outcomes[-1].name == "rounds" and outcomes[-1].status == "done"
    r1, r2 = run / "round-1", run / "round-2"
    model1 = json.loads((r1 / "train.json").read_text())["models"]["dpo"]
    train2 = json.loads((r2 / "train.json").read_text())
    assert train2["base_model"] == model1  # round 2 trained round 1's model

    # round 2's generations come from round 1's model: its path and weights in every record
    g1 = _records(r1 / "generations.jsonl", Generations)[0].provenance["backend"]
    g2 = _records(r2 / "generations.jsonl", Generations)[0].provenance["backend"]
    assert g1["model"] == tiny_llama and g2["model"] == model1
    assert g1["weights"] != g2["weights"]
    # the same held-out prompts under each model: different cache keys, so nothing is reused
    manifests = {m: json.loads((run / "heldout" / m / "manifest.json").read_text()) for m in ("base", "round-1")}
    for m in manifests.values():
        gens = m["stages"]["generations"]["summary"]
        assert gens["cached_generations"] == 0 and gens["backend_generations"] == gens["generations"] > 0
    # round 2's evaluation starts from round 1's model; vs-base from the original one
    report2 = json.loads((r2 / "evaluation" / "report.json").read_text())
    assert report2["models"] == {"baseline": model1, "candidate": train2["models"]["dpo"]}
    vs_base = json.loads((r2 / "vs-base" / "evaluation" / "report.json").read_text())
    assert vs_base["models"] == {"baseline": tiny_llama, "candidate": train2["models"]["dpo"]}

    # documents: disjoint training slices, the same held-out questions in both rounds
    q1, q2 = _records(r1 / "questions.jsonl", Question), _records(r2 / "questions.jsonl", Question)
    s1 = {s.question_id: s.s_k for s in _records(r1 / "scores.jsonl", Scores)}
    unknown = {q.id for q in q1 if s1[q.id] is not None and s1[q.id] > 0.5}
    assert unknown and len(unknown) < len(q1), "the scorer should leave round-1 questions of both kinds"
    fresh2 = {q.document_id for q in q2 if q.id not in unknown}
    assert fresh2 and not fresh2 & {q.document_id for q in q1}
    assert unknown <= {q.id for q in q2}  # round 1's unknown questions asked again ...
    assert not ({q.id for q in q1} - unknown) & {q.id for q in q2}  # ... and only those
    assert (r1 / "test_questions.jsonl").read_bytes() == (r2 / "test_questions.jsonl").read_bytes()

    _assert_round_two_lineage(Path(train2["models"]["dpo"]), r1, model1, tiny_llama)

    # the report across rounds
    report = (run / "report.md").read_text()
    assert "| 1 | 3 | 0 | 3 | 3 |" in report and "| 2 | 3 | " in report
    assert "round 2 vs round 1" in report and "round 2 vs base" in report
    assert (run / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "rounds.json").read_text())
    assert [e["kept_pairs"] for e in summary["per_round"]] == [3, 3 + len(unknown)]
    assert set(summary["heldout_s_k"]) == {"base", "round-1", "round-2"}

    config = _config(run, tiny_llama, scorer=QuestionHashScorer())
    plan = Pipeline(config).plan()  # the dry-run: both rounds done
    assert [(r["stage"], r["status"]) for r in plan][-2:] == [("round-1", "done"), ("round-2", "done")]
    again = Pipeline(config).run()  # the same command again does nothing
    assert {o.status for o in again[:-1]} == {"skipped"}


def test_rounds_in_the_paper_flow_train_g_sft_from_the_previous_rounds_model(tiny_llama, tmp_path):
    """flow: paper in rounds: each round labels SFT rows and trains its G_SFT from the model the
    round starts from, and the held-out S_K of each model is that very model's (no G_SFT there)."""
    run = tmp_path / "run"
    config = _config(run, tiny_llama, flow="paper", rounds={"count": 2, "passages": "fresh"},
                     sft_trainer={"use": "trl-sft", "options": {
                         "max_steps": 1, "per_device_train_batch_size": 2, "max_length": 1024, "save_steps": 0}},
                     datasets={"sft_rc_fraction": 1.0}, evaluate={"known_items": 0})
    outcomes = Pipeline(config).run()
    assert outcomes[-1].name == "rounds" and outcomes[-1].status == "done"
    model1 = json.loads((run / "round-1" / "train.json").read_text())["models"]["dpo"]
    sft2 = json.loads((run / "round-2" / "sft_model.json").read_text())
    assert sft2["base_model"] == model1  # round 2's G_SFT starts from round 1's DPO model
    assert json.loads((run / "round-2" / "train.json").read_text())["models"]["sft"] == sft2["model"]
    for label, model in (("base", tiny_llama), ("round-2", json.loads((run / "rounds.json").read_text())
                                                 ["per_round"][1]["model"])):
        manifest = json.loads((run / "heldout" / label / "manifest.json").read_text())
        assert "sft" not in manifest["stages"]
        g = _records(run / "heldout" / label / "generations.jsonl", Generations)[0]
        assert g.provenance["backend"]["model"] == model


def test_a_round_keeping_too_few_pairs_ends_the_run(tiny_llama, tmp_path, capsys):
    run = tmp_path / "run"
    config = _config(run, tiny_llama, rounds={"count": 3, "passages": "fresh", "min_pairs": 2,
                                              "heldout_scores": False})
    # one category: 3 training documents, so 2 rounds train on 2 and 1 documents (1 pair each)
    config["source"]["options"]["categories"] = ["History"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--rounds", "2"]) == 0  # --rounds overrides rounds.count
    out = capsys.readouterr().out
    assert "stopped: round 2 kept 1 DPO pair(s), fewer than rounds.min_pairs=2" in out
    assert "nothing left to learn at these thresholds" in out
    assert (run / "round-1" / "train.json").exists() and not (run / "round-2" / "train.json").exists()
    summary = json.loads((run / "rounds.json").read_text())
    assert summary["rounds"] == 2 and summary["completed"] == 1
    assert summary["stopped"].startswith("round 2 kept 1")
    assert "**Stopped:** round 2 kept 1" in (run / "report.md").read_text()


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from selflearn import Pipeline
    Pipeline(json.loads(open(sys.argv[1]).read())).run()
    """
)


def _spawn(script: Path, config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SELFLEARN_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _normalised(path: Path, run: Path) -> str:
    """The file with the run directory's path and the weights fingerprints blanked: a model's
    fingerprint hashes its folder, lineage time stamp included, so two runs never share it."""
    return re.sub(r'"weights": "[0-9a-f]+"', '"weights": ""', path.read_text().replace(str(run), "<run>"))


@pytest.mark.slow
def test_a_kill_in_round_two_resumes_to_the_same_artifacts(tiny_llama, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    runs = {}
    for name in ("clean", "killed"):
        runs[name] = tmp_path / name
        cfg = _config(runs[name], tiny_llama, scorer="lexical",
                      rounds={"count": 2, "passages": "fresh+unknown", "heldout_scores": False})
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    proc = _spawn(script, tmp_path / "clean.json")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode() if proc.stderr else ""

    proc = _spawn(script, tmp_path / "killed.json")
    manifest = runs["killed"] / "round-2" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once round 2 is under way
        if manifest.exists() and "generations" in json.loads(manifest.read_text() or "{}").get("stages", {}):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (runs["killed"] / "round-2" / "train.json").exists()

    proc = _spawn(script, tmp_path / "killed.json")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode() if proc.stderr else ""
    for name in ("questions.jsonl", "generations.jsonl", "scores.jsonl", "dpo_pairs.jsonl",
                 "evaluation/answers_baseline.jsonl", "evaluation/answers_candidate.jsonl",
                 "vs-base/evaluation/answers_baseline.jsonl"):
        clean, killed = (_normalised(runs[k] / "round-2" / name, runs[k]) for k in ("clean", "killed"))
        assert clean == killed, name
    lineages = [json.loads((runs[k] / "round-2" / "models" / "dpo" / "selflearn-lineage.json").read_text())
                for k in ("clean", "killed")]
    assert lineages[0]["data"] == lineages[1]["data"]
    assert lineages[0]["metrics"]["train_loss"] == lineages[1]["metrics"]["train_loss"]


def test_the_two_round_example_is_the_reduced_default_in_two_rounds():
    from selflearn.core.config import load_yaml

    config = load_yaml(ROOT / "examples" / "rounds-reduced.yaml")
    pipeline = Pipeline(config)
    assert pipeline.rounds is not None and pipeline.rounds.count == 2
    assert pipeline.rounds.passages == "fresh+unknown"
    assert config["model"] == default_config()["model"]


@pytest.mark.slow
@pytest.mark.mainjob
def test_two_rounds_of_the_reduced_default_on_the_real_model(tmp_path):
    from selflearn.core.config import load_yaml

    config = {**load_yaml(ROOT / "examples" / "rounds-reduced.yaml"), "run_dir": str(tmp_path / "run")}
    outcomes = Pipeline(config).run()
    assert outcomes[-1].name == "rounds" and outcomes[-1].status in ("done", "stopped")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| 1 |" in report
    if outcomes[-1].status == "done":
        assert "| 2 |" in report and "round 2 vs base" in report


def test_round_settings_that_cannot_work_are_config_errors(tmp_path):
    from selflearn.core.errors import ConfigError

    base = {"run_dir": str(tmp_path / "r"), "model": "m", "rounds": {"count": 2, "passages": "fresh+unknown"}}
    cases = [
        ({"evaluate": {"candidate_model": "x"}}, "evaluate.candidate_model"),
        ({"rounds": {"count": 0}}, "rounds.count"),
        ({"rounds": "two"}, "rounds"),
        ({"rounds": {"count": 2, "passages": "old"}}, "rounds.passages"),
    ]
    for extra, path in cases:
        with pytest.raises(ConfigError) as info:
            Pipeline({**base, **extra}).run()
        assert info.value.path == path, (extra, str(info.value))
        assert not (tmp_path / "r" / "documents").exists()
    import pickle

    from selflearn.core.rounds_parts import StoredQuestions

    stored = StoredQuestions([Question(id="q", passage_id="p", document_id="d", text="Why?")], label="t")
    stored.bind_run(object())  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(stored)).identity() == stored.identity()


def test_training_documents_are_dealt_into_disjoint_seeded_slices_per_category():
    from selflearn.core.errors import ConfigError
    from selflearn.core.records import Document
    from selflearn.core.rounds_parts import slice_documents

    docs = [Document(id=f"{c}{i}", title="t", text="x", metadata={"category": c, "split": "train"})
            for c in "ab" for i in range(6)]
    docs.append(Document(id="held", title="t", text="x", metadata={"split": "test"}))
    slices, test = slice_documents(docs, 3, seed=1)
    assert test == ["held"]
    assert sorted(i for s in slices for i in s) == sorted(d.id for d in docs[:-1])  # disjoint, complete
    assert all(sum(i.startswith(c) for i in s) == 2 for s in slices for c in "ab")  # each category
    assert slice_documents(list(reversed(docs)), 3, seed=1)[0] == slices  # not the source's order
    assert slice_documents(docs, 3, seed=2)[0] != slices  # but the seed's
    with pytest.raises(ConfigError) as info:
        slice_documents(docs[:2], 3, seed=1)
    assert info.value.path == "rounds.count" and "need 3 training documents" in str(info.value)
    # a fixed number per round: more rounds later keep the earlier rounds' documents
    two = slice_documents(docs, 2, seed=1, per_round=4)[0]
    assert slice_documents(docs, 3, seed=1, per_round=4)[0][:2] == two
    assert all(sum(i.startswith(c) for i in s) == 2 for s in two for c in "ab")
    with pytest.raises(ConfigError) as info:
        slice_documents(docs, 4, seed=1, per_round=4)
    assert info.value.path == "rounds.documents_per_round"
