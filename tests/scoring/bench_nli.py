"""Benchmark: the whole ``selfcheck-nli`` scorer vs the bare forward of its classifier.

Not a test (pytest does not collect it): run it on a GPU machine,

    python tests/scoring/bench_nli.py --assets .assets/bench_nli [--json out.json]

with ``--assets`` a folder holding ``tokenizer/`` (any DeBERTa-v2-style tokenizer; we train a
32k-piece unigram on Wikipedia leads, see docs/scoring.md) and ``texts.json`` (a list of
paragraphs). A DeBERTa-v3-large-shaped classifier (24 layers, hidden 1024, 2 labels) is built
with random weights, saved, and loaded by the scorer exactly as a downloaded checkpoint would be.

For each workload, the scorer's rate (sentence splitting, tokenisation, de-duplication,
sorting, batching, forward, softmax, cache writes: ``score(items)`` end to end, model already
loaded) is compared with the bare model's forward rate on the same pairs in the same batches,
tensors already on the GPU. Fixed-length rates (every pair exactly 128 / 256 tokens, batch 64)
are printed too, for comparison with offline-assets.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from selflearn.builtin.scorers import nli  # noqa: E402
from selflearn.builtin.scorers._common import token_batches  # noqa: E402
from selflearn.builtin.scorers._nli import NLIEngine  # noqa: E402
from selflearn.core.cache import JsonlCache  # noqa: E402
from selflearn.core.protocols import ScoreItem  # noqa: E402


def build_model(assets: str, folder: str, device: str, tiny: bool) -> str:
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(os.path.join(assets, "tokenizer"))
    config = DebertaV2Config(
        vocab_size=128100, hidden_size=64 if tiny else 1024, num_hidden_layers=2 if tiny else 24,
        num_attention_heads=4 if tiny else 16, intermediate_size=128 if tiny else 4096, max_position_embeddings=512, relative_attention=True,
        position_buckets=256, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
        share_att_key=True, position_biased_input=False, type_vocab_size=0,
        pad_token_id=tok.pad_token_id, num_labels=2, id2label={0: "entailment", 1: "contradiction"},
        label2id={"entailment": 0, "contradiction": 1}, max_relative_positions=-1,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = DebertaV2ForSequenceClassification(config)
    model.to(torch.bfloat16 if device.startswith("cuda") else torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def workload(texts: list[str], n_items: int, k: int, sample_words: int, rng: random.Random) -> list[ScoreItem]:
    """References = paragraphs (split into sentences by the scorer); samples = other paragraphs
    cut or joined to about ``sample_words`` words (also benchmarks/run_gpu.py's NLI items)."""
    items = []
    for i in range(n_items):
        samples = []
        for _ in range(k):
            words: list[str] = []
            while len(words) < sample_words:
                words += rng.choice(texts).split()
            samples.append(" ".join(words[:sample_words]))
        items.append(ScoreItem(reference=texts[i % len(texts)], samples=samples))
    return items


DEVICE = "cuda"


def sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def padded_batches(engine: NLIEngine, pairs: list[tuple[str, str]], device: str) -> tuple[list[list[int]], list[Any]]:
    """The pairs' token ids (the tokenizer's own pair call) and (ids, mask) tensors on ``device``
    in the engine's token batches: a bare forward's input, prepared outside any timing."""
    import torch

    tok = engine._tokenizer
    ids = tok([p for p, _ in pairs], [h for _, h in pairs], truncation=True, max_length=engine.max_length)["input_ids"]
    pad = tok.pad_token_id
    ready = []
    for b in token_batches([len(x) for x in ids], engine.max_tokens_per_batch, engine.batch_size):
        w = max(len(ids[i]) for i in b)
        ready.append((
            torch.tensor([ids[i] + [pad] * (w - len(ids[i])) for i in b], device=device),
            torch.tensor([[1] * len(ids[i]) + [0] * (w - len(ids[i])) for i in b], device=device),
        ))
    return ids, ready


def bare_rate(engine: NLIEngine, pairs: list[tuple[str, str]]) -> tuple[float, int, float]:
    """Pairs/s of the bare forward on the same pairs and batches, tensors prepared beforehand."""
    import torch

    model = engine._model
    ids, ready = padded_batches(engine, pairs, DEVICE)
    with torch.inference_mode():
        for x, m in ready[:3]:  # warm-up
            model(input_ids=x, attention_mask=m)
        sync()
        t0 = time.perf_counter()
        for x, m in ready:
            model(input_ids=x, attention_mask=m).logits.float().softmax(-1)
        sync()
        dt = time.perf_counter() - t0
    mean_len = sum(len(x) for x in ids) / len(ids)
    return len(pairs) / dt, len(ready), mean_len


def fixed_rate(engine: NLIEngine, length: int, batch: int = 64, steps: int = 30) -> float:
    import torch

    x = torch.randint(10, 30000, (batch, length), device=DEVICE)
    m = torch.ones_like(x)
    with torch.inference_mode():
        for _ in range(3):
            engine._model(input_ids=x, attention_mask=m)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            engine._model(input_ids=x, attention_mask=m).logits.float().softmax(-1)
        sync()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=".assets/bench_nli")
    ap.add_argument("--json", default=None)
    ap.add_argument("--items", type=int, default=800)
    ap.add_argument("--budgets", default="32768")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (smoke test on CPU)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    with open(os.path.join(args.assets, "texts.json"), encoding="utf-8") as f:
        texts = json.load(f)
    work = tempfile.mkdtemp(prefix="bench-nli-")
    model_dir = build_model(args.assets, os.path.join(work, "model"), DEVICE, args.tiny)
    results: dict[str, Any] = {}
    for budget in [int(b) for b in args.budgets.split(",")]:
        for name, words in (("short (~128-token pairs)", 75), ("long (~256-token pairs)", 170)):
            cache = JsonlCache(os.path.join(work, f"cache-{budget}-{words}.jsonl"))
            engine = NLIEngine(model_dir, device=DEVICE, max_tokens_per_batch=budget, cache=cache)
            scorer = nli.SelfCheckNLI(nli.Options(model=model_dir), engine)
            n_items = args.items if words < 100 else args.items // 2
            items = workload(texts, n_items, 10, words, random.Random(words))
            engine._load()
            engine.cache = None  # warm-up (kernels, allocator), caching nothing the run then finds
            scorer.score(workload(texts, 4, 10, words, random.Random(1)))
            engine.cache = cache
            engine.computed = 0
            engine.timing = dict.fromkeys(engine.timing, 0.0)
            t0 = time.perf_counter()
            scorer.score(items)
            dt = time.perf_counter() - t0
            pairs = list(dict.fromkeys(
                (s, x) for it in items for x in it.samples for s in nli.split_sentences(it.reference)
            ))
            assert engine.computed == len(pairs), (engine.computed, len(pairs))
            bare, n_batches, mean_len = bare_rate(engine, pairs)
            t1 = time.perf_counter()
            scorer.score(items)  # everything cached now
            cached = len(pairs) / (time.perf_counter() - t1)
            row = {
                "pairs": len(pairs), "mean_tokens": round(mean_len, 1), "batches": n_batches,
                "scorer_pairs_per_s": round(len(pairs) / dt, 1), "bare_pairs_per_s": round(bare, 1),
                "ratio": round(len(pairs) / dt / bare, 3), "cached_pairs_per_s": round(cached, 1),
                "scorer_s": round(dt, 2), "engine_timing_s": {k: round(v, 2) for k, v in engine.timing.items()},
            }
            results[f"{name}, budget {budget}"] = row
            print(name, "budget", budget, json.dumps(row), flush=True)
    eng = NLIEngine(model_dir, device=DEVICE)
    eng._load()
    for length in (128, 256, 512):
        rate = fixed_rate(eng, length, batch=64 if length < 512 else 32)
        results[f"bare fixed {length}"] = round(rate, 1)
        print(f"bare forward, every pair {length} tokens: {rate:.1f} pairs/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
