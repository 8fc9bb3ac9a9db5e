"""docs/servers.md's recipes, each run through the pipeline against a local server that behaves
like the real one (tests/server_kinds.py): vLLM, SGLang, llama.cpp's server, transformers serve.

Each recipe is the YAML block of docs/servers.md marked ``# recipe: KIND``, so the documented
options are the tested ones. A run goes documents -> passages -> questions -> generations ->
scores -> datasets with the server as the backend; the transformers-serve run also trains a
tiny model on the pairs. The tests without a recipe show what each server does to a run that
does not follow it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from selflearn import Pipeline
from selflearn.core.config import merge
from selflearn.core.errors import SelflearnError
from selflearn.core.records import Generations
from tests.server_kinds import KINDS, server_kind
from tests.servers import FakeServer

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ("Ada Lovelace", "Ada Lovelace was an English mathematician. She wrote the first published "
     "algorithm for Babbage's Analytical Engine. Her notes describe a method to compute Bernoulli numbers."),
    ("Mont Blanc", "Mont Blanc is the highest mountain in the Alps. It rises 4,805 metres above sea "
     "level. The summit lies on the border between France and Italy."),
    ("Nirvana", "Nirvana was an American rock band formed in Aberdeen, Washington, in 1987. Its "
     "album Nevermind was released in 1991. The band broke up in 1994."),
]


def recipes() -> dict[str, dict[str, Any]]:
    """KIND -> the config of docs/servers.md's ``# recipe: KIND`` block."""
    text = (ROOT / "docs" / "servers.md").read_text()
    out = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        match = re.match(r"# recipe: (\S+)\n", block)
        if match:
            out[match.group(1)] = yaml.safe_load(block)
    return out


def config(run_dir: Path, url: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """A small run whose backend is the recipe's, pointed at the local server."""
    docs = run_dir.parent / "docs"
    docs.mkdir(exist_ok=True)
    for title, text in DOCS:
        (docs / f"{title}.txt").write_text(text)
    base = {
        "run_dir": str(run_dir),
        "source": {"use": "files", "options": {"url": str(docs), "test_per_category": 0}},
        "chunker": {"use": "sentences", "options": {"max_tokens": 64}},
        "question_generator": "template",
        "generations": {"k": 3, "chunk_size": 2},
        "scorer": "lexical",
        "datasets": {"tau_k": 0.0, "consistency_filter": False},
        "plugins": {"strict": True},
    }
    cfg = merge(base, recipe)
    cfg["backend"]["options"].update(base_url=url + "/v1", model="test-model", backoff=0.01)
    return cfg


def test_every_server_has_a_recipe() -> None:
    found = recipes()
    assert set(found) == set(KINDS)
    for recipe in found.values():
        assert recipe["backend"]["use"] == "openai" and "logprobs" in recipe["generations"]


@pytest.mark.parametrize("kind", KINDS)
def test_recipe_runs_the_pipeline(kind: str, tmp_path: Path) -> None:
    recipe = recipes()[kind]
    with FakeServer(server_kind(kind)) as server:
        pipe = Pipeline(config(tmp_path / "run", server.url, recipe), load_entry_points=False)
        pipe.run(until="datasets")
        pipe.close()
    gens = pipe.store.read_records("generations.jsonl", Generations)
    summary = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["generations"]["summary"]
    assert gens and summary["sample_diversity"]["with_passage"]["all_identical"] == 0.0
    assert summary["sample_diversity"]["without_passage"]["all_identical"] == 0.0
    assert all(len({c.text for c in g.with_passage}) == 3 for g in gens)
    logprobs = recipe["generations"]["logprobs"]
    assert all(bool(c.logprobs) == logprobs for g in gens for c in (g.reference, *g.with_passage))
    bodies = [b for _, b, _ in server.requests]
    sampled = [b for b in bodies if b.get("temperature")]
    assert {b.get("n", 1) for b in sampled} == ({3} if recipe["backend"]["options"].get("max_n") != 1 else {1})
    assert len({b["seed"] for b in sampled}) > 1
    assert all(("repetition_penalty" in b) == (kind in ("vllm", "sglang")) for b in sampled)
    assert (tmp_path / "run" / "dpo_pairs.jsonl").read_text().strip()


def test_transformers_serve_recipe_trains_a_tiny_model(tiny_llama: str, tmp_path: Path) -> None:
    """The acceptance run: transformers serve (sampling on) as the backend, then DPO with LoRA on
    a tiny model from the pairs; the model card names its base."""
    recipe = merge(recipes()["transformers-serve"], {
        "model": tiny_llama,
        "trainer": {"use": "trl-dpo", "options": {
            "use_lora": True, "lora_r": 2, "lora_alpha": 4, "max_steps": 1, "learning_rate": 1e-4,
            "per_device_train_batch_size": 2, "max_prompt_length": 64, "max_length": 96,
            "save_steps": 0, "eval_fraction": 0.0, "gradient_checkpointing": False}},
    })
    with FakeServer(server_kind("transformers-serve")) as server:
        pipe = Pipeline(config(tmp_path / "run", server.url, recipe), load_entry_points=False)
        pipe.run(until="train")
        pipe.close()
    model_dir = tmp_path / "run" / "models" / "dpo"
    assert (model_dir / "adapter" / "adapter_config.json").exists()
    from huggingface_hub import ModelCard

    assert ModelCard.load(str(model_dir / "README.md")).data.pipeline_tag == "text-generation"


@pytest.mark.parametrize(
    ("kind", "options", "match"),
    [
        ("llama.cpp", {"max_n": 128}, r"HTTP 500"),  # "Only one completion choice is allowed"
        ("transformers-serve", {"max_n": 128}, r"returned 1 choices for n=3.*max_n"),
        ("transformers-serve", {"send_repetition_penalty": True}, r"422"),
    ],
)
def test_without_the_recipe_the_run_stops_with_a_clear_error(
    kind: str, options: dict[str, Any], match: str, tmp_path: Path
) -> None:
    recipe = recipes()[kind]
    recipe["backend"]["options"].update(options)
    with FakeServer(server_kind(kind)) as server:
        pipe = Pipeline(config(tmp_path / "run", server.url, recipe), load_entry_points=False)
        with pytest.raises(SelflearnError, match=match):
            pipe.run(until="generations")
        pipe.close()
    assert not (tmp_path / "run" / "generations.jsonl").exists()


def test_transformers_serve_without_do_sample_is_flagged(tmp_path: Path) -> None:
    with FakeServer(server_kind("transformers-serve", do_sample=False)) as server:
        pipe = Pipeline(config(tmp_path / "run", server.url, recipes()["transformers-serve"]),
                        load_entry_points=False)
        with pytest.raises(SelflearnError, match=r"100% of the \d+ questions.*do_sample"):
            pipe.run(until="scores")
        pipe.close()
    assert not (tmp_path / "run" / "scores.jsonl").exists()
