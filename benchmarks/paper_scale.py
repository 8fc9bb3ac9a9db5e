"""The paper-scale data stage as a run of the pipeline (issue 19), not an estimate.

5,780 template questions over real Wikipedia passages (the paper's count), then the
generations stage (greedy reference + K = 10 samples with and 10 without the passage, up to 384
new tokens, the ``hf`` backend) and the scores stage (``selfcheck-nli``, the paper's scorer), on
random-weight models of the TinyLlama-1.1B (or SmolLM2-135M) and DeBERTa-v3-large shapes:
``selflearn run`` in all but the command line. Random weights are the worst case for the
generations (their answers never end before ``--max-new-tokens``).

    python benchmarks/paper_scale.py --out runs/paper-scale                # the GPU machine
    python benchmarks/paper_scale.py --smoke --out runs/paper-scale-smoke  # tiny, on the CPU

The run directory lives under ``--out``: the same command again resumes from the per-call cache
(a 10-minute call that ends early loses nothing), and every invocation's stage times are kept,
so ``paper_scale.json`` says whether the figure comes from one uninterrupted invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("SELFLEARN_NO_PROGRESS", "1")

import ray_overhead  # noqa: E402  (its paper_shape is this run's config)
import run_gpu  # noqa: E402  (the model shapes and builders)

from selflearn import Pipeline  # noqa: E402
from selflearn.core.config import merge  # noqa: E402

SHAPES = {"1.1b": run_gpu.TINYLLAMA_1B, "135m": run_gpu.SMOLLM2_135M}


def models(args: argparse.Namespace, out: Path, device: str) -> tuple[str, str]:
    """The model under training and the NLI classifier: folders built once under ``out``."""
    tok_args = argparse.Namespace(assets=args.assets, smoke=args.smoke)
    corpus = run_gpu.texts(argparse.Namespace(nli_assets=args.nli_assets, smoke=True))
    lm, nli = out / f"lm-{args.shape}", out / "nli"
    if args.model:
        lm = Path(args.model)
    elif not (lm / "config.json").exists():
        tok = run_gpu.tokenizer_dir("smollm2_tok" if args.shape == "135m" else "tok32k", tok_args, str(out), corpus)
        shape = run_gpu.TINY if args.smoke else SHAPES[args.shape]
        run_gpu.build_lm(shape, tok, str(lm), device)
    if not (nli / "config.json").exists():
        tok_path = os.path.join(args.nli_assets, "tokenizer")
        tok = tok_path if os.path.isdir(tok_path) and not args.smoke else run_gpu.tokenizer_dir("nli_tok", tok_args, str(out), corpus)
        size = run_gpu.DEBERTA_TINY if args.smoke else run_gpu.DEBERTA_V3_LARGE
        run_gpu.build_nli(size, tok, str(nli), device)
    return str(lm), str(nli)


def config_for(args: argparse.Namespace, run_dir: Path, lm: str, nli: str) -> dict[str, Any]:
    """ray_overhead's paper shape (template questions, K, tokens, batch) run on to the scores."""
    config = ray_overhead.paper_shape(str(run_dir), lm, args.questions, args.k, args.max_new_tokens, args.batch_size,
                                      args.chunk_size)
    config = merge(config, {"scorer": {"use": "selfcheck-nli", "options": {"model": nli}}})
    config["backend"]["options"]["mix_greedy"] = args.mix_greedy  # y* decoded beside Y_c or not
    return config


STAGES = ("generations", "scores")


def record(out: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Store this invocation in ``paper_scale.json`` (``entry`` with ``started``: mark it
    started). An invocation cut by SIGTERM records what it did (:func:`run_stages`); one killed
    outright (SIGKILL) stays a started entry; :func:`figure` reads the figure from the list."""
    path = out / "paper_scale.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"invocations": []}
    if entry.get("started"):
        result["invocations"].append(entry)
    else:
        result["invocations"][-1] = {**result["invocations"][-1], **entry}
        result.update(figure(result["invocations"]))
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def figure(invocations: list[dict[str, Any]]) -> dict[str, Any]:
    """The data stage's minutes: each stage's seconds summed over the invocations that ran it.
    One complete invocation per stage is the whole figure (``--until generations`` then the
    same command to the scores gives that in two calls). A stage split over several complete
    invocations (``--questions 2890``, then 5,780) pays the model's start-up in each: an upper
    bound, and so is a stage one of whose invocations was cut by SIGTERM (its seconds count; its
    last shard runs again). A stage after an invocation killed without a record (SIGKILL, which
    may have done part of the work) covers only the rest: a lower bound."""
    stages: dict[str, Any] = {}
    for i, inv in enumerate(invocations):
        spent = dict(inv.get("ran_s", {}))
        if "cut" in inv:  # cut at a call's limit: its seconds in the stage count too
            spent[inv["cut"]["stage"]] = spent.get(inv["cut"]["stage"], 0.0) + inv["cut"]["seconds"]
        for stage in STAGES:
            if stage in spent:
                entry = stages.setdefault(stage, {"seconds": 0.0, "invocations": []})
                entry["seconds"] = round(entry["seconds"] + spent[stage], 1)
                entry["invocations"].append(i)
    if not stages:  # invocations that found everything done keep the figure
        return {}
    last_run = max(i for v in stages.values() for i in v["invocations"])
    interrupted = any("ran_s" not in inv and "cut" not in inv for inv in invocations[:last_run])
    done = {s for inv in invocations for s in inv.get("ran_s", {})}
    missing = [s for s in STAGES if s not in done]
    split = [s for s, v in stages.items() if len(v["invocations"]) > 1]
    if missing:
        measured = f"incomplete: {', '.join(missing)} not finished yet"
    elif interrupted:
        measured = "a lower bound: an interrupted invocation did part of the work, uncounted"
    elif split:
        measured = (f"an upper bound: {', '.join(split)} ran over several invocations, each starting its model "
                    "again (an invocation cut at a call's limit counts its seconds; its last shard runs twice)")
    else:
        measured = "whole, each stage in one invocation with nothing cached before it"
    return {"data_stage_minutes": round(sum(v["seconds"] for v in stages.values()) / 60, 2),
            "stages": stages, "measured_in": measured}


def lines(path: Path) -> int:
    """Lines of a JSONL file (0 if absent)."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def nli_pairs(run_dir: Path) -> int:
    """The (reference sentence, sample) pairs the scores stage classifies (before the engine
    drops duplicates): the stage's work, known before it starts, so a cut invocation's share of
    it (the NLI cache's lines) says how far the stage got."""
    from selflearn.builtin.scorers.nli import sentence_grid
    from selflearn.core.protocols import ScoreItem

    total = 0
    with (run_dir / "generations.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            item = ScoreItem(reference=row["reference"]["text"],
                             samples=[c["text"] for c in row["with_passage"] + row["without_passage"]])
            ((sentences, samples),) = sentence_grid([item])  # the scorer's own grid
            total += len(sentences) * sum(1 for s in samples if s)
    return total


class Cut(BaseException):
    """SIGTERM (``timeout`` at a call's limit) while a stage runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Cut


def run_stages(pipeline: Any, until: str, run_dir: Path) -> dict[str, Any]:
    """Run the stages one at a time, timing each. At SIGTERM the running stage's seconds so
    far and its progress (finished shards, NLI pairs computed) are recorded under ``cut``
    before the process ends: a call cut at its limit still counts toward the figure."""
    entry: dict[str, Any] = {"ran_s": {}, "generations_made": {}}
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for stage in STAGES[: STAGES.index(until) + 1]:
            if stage == "scores" and not (run_dir / "scores.jsonl").exists():
                entry["nli_pairs"] = nli_pairs(run_dir)
            t0 = time.perf_counter()
            try:
                outcomes = pipeline.run(until=stage)
            except Cut:
                entry["cut"] = {"stage": stage, "seconds": round(time.perf_counter() - t0, 1),
                                "shards_cached": lines(run_dir / "cache" / "shards.jsonl"),
                                "nli_pairs_cached": lines(run_dir / "cache" / "nli.jsonl")}
                return entry
            _ran(entry, stage, outcomes)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return entry


def _ran(entry: dict[str, Any], stage: str, outcomes: list[Any]) -> None:
    """The stage's seconds (and its work) into ``entry`` when it ran in this invocation."""
    for o in outcomes:
        if o.name == stage and o.status == "ran":
            entry["ran_s"][stage] = round(o.seconds, 1)
            if stage == "generations":  # made here against found in the per-call cache
                entry["generations_made"] = {k: o.summary.get(k) for k in ("backend_generations", "cached_generations")}
                entry["call_seconds"] = o.summary.get("execution", {}).get("call_seconds")
            else:
                entry["nli_pairs_computed"] = o.summary.get("engine_computed")


def counts(run_dir: Path) -> dict[str, int]:
    """Rows written by each data stage (every question answered and scored once)."""
    return {name: lines(run_dir / f"{name}.jsonl") for name in ("questions", "generations", "scores")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/paper-scale")
    ap.add_argument("--smoke", action="store_true", help="tiny models and sizes, on the CPU")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.1b")
    ap.add_argument("--model", default="", help="a model folder instead of the random-weight shape")
    ap.add_argument("--questions", type=int, default=5780)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=640, help="the hf backend's sequences per pass")
    ap.add_argument("--chunk-size", type=int, default=64, help="questions per generations shard")
    ap.add_argument("--mix-greedy", choices=("auto", "on", "off"), default="auto",
                    help="the hf backend's mix_greedy: y* decoded with Y_c (auto: with the loop decoder only)")
    ap.add_argument("--until", choices=STAGES, default="scores",
                    help="stop after this stage (generations: the scores in a later invocation, e.g. another call)")
    ap.add_argument("--assets", default=str(HERE.parent / ".assets" / "perf"))
    ap.add_argument("--nli-assets", default=str(HERE.parent / ".assets" / "bench_nli"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.questions, args.k, args.max_new_tokens, args.batch_size = min(args.questions, 6), 2, 6, 8
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    lm, nli = models(args, out, device)
    run_dir = out / "run"
    record(out, {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "questions": args.questions, "until": args.until})
    config = config_for(args, run_dir, lm, nli)
    pipeline = Pipeline(config)
    pipeline.run(until="questions")
    ray_overhead.check_questions(run_dir, args.questions)  # never time a smaller stage than asked for
    t0 = time.perf_counter()
    entry = run_stages(pipeline, args.until, run_dir)
    entry = {
        "wall_s": round(time.perf_counter() - t0, 1), **entry,
        "rows": counts(run_dir), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "shape": "tiny" if args.smoke else args.shape, "questions": args.questions, "k": args.k,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "versions": run_gpu.versions(),
    }
    result = record(out, entry)
    print(json.dumps({k: v for k, v in result.items() if k != "invocations"} | {"this": entry}, indent=2))
    return 124 if "cut" in entry else 0


if __name__ == "__main__":
    raise SystemExit(main())
