"""The ``ray`` execution engine against ``local``, side by side in one run (issue 16).

``--cpu``: the reduced offline default (real SmolLM2-135M, real Wikipedia leads, MiniLM scorer;
the data stages questions -> scores) with ``engine: ray`` and 1 worker against 2 workers (and
``local`` for reference), each from the same passages in a fresh run directory and cache.

``--gpu``: the generations stage at the paper's scale shape (K = 10 samples with and 10 without
the passage, up to 384 new tokens, plus the greedy reference) with ``engine: ray`` and one
worker on the one GPU against ``local``: Ray's overhead in percent of the local time.

Writes ``ray.json`` and prints a Markdown table; run it from the repository root::

    python benchmarks/ray_overhead.py --cpu --out runs/bench-ray-cpu
    python benchmarks/ray_overhead.py --gpu --questions 256 --out runs/bench-ray-gpu
    python benchmarks/ray_overhead.py --gpu --model DIR --repeats 2 --fractional  # + 2 workers at 0.5 GPU
    python benchmarks/ray_overhead.py --gpu --fresh --arms local ...   # each arm in a new process;
    python benchmarks/ray_overhead.py --gpu --fresh --arms ray-1 ...   # --arms splits it over calls
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("SELFLEARN_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from selflearn import Pipeline  # noqa: E402
from selflearn.core.config import default_config, merge  # noqa: E402


def reduced_default(run_dir: str, shard: int | None = None) -> dict[str, Any]:
    """The embedded default made small: 2 categories x 3 training documents, K = 2; with
    ``shard``, that many passages / questions / records per shard (the same in every arm), so
    that the 6 questions make several shards for the workers to share."""
    config = merge(default_config(), {
        "run_dir": run_dir,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History", "Geography"], "train_per_category": 3, "test_per_category": 1,
            "min_words": 40}},
        "generations": {"k": 2},
    })
    if shard:
        config = merge(config, {"questions": {"batch_size": shard}, "generations": {"chunk_size": shard}})
    return config


def paper_shape(run_dir: str, model: str | None, questions: int, k: int = 10, tokens_max: int = 384,
                batch_size: int = 640, chunk_size: int = 64) -> dict[str, Any]:
    """Template questions over real passages, of which the generations stage answers the first
    ``questions`` at K = 10, 384 tokens, ``batch_size`` sequences per forward pass (fixed, so
    that two workers sharing one GPU decode the same batches as one worker alone). The leads
    of all 12 topics, the first tenth more than ``questions`` of them in the source's round-robin
    order: three topics hold only about 2,500, short of the paper's 5,780, and a template finds
    no question in about 1% of passages."""
    config = reduced_default(run_dir)
    tokens = {"max_new_tokens": tokens_max}
    config["source"]["options"] = {"categories": None, "train_per_category": None, "test_per_category": 1,
                                   "min_words": 40}
    return merge(config, {
        **({"model": model} if model else {}),
        "documents": {"limit": questions + questions // 10 + 24},
        "question_generator": "template",
        "backend": {"use": "hf", "options": {"batch_size": batch_size}},
        "generations": {"k": k, "chunk_size": chunk_size, "limit": questions, "reference": tokens,
                        "with_passage": tokens, "without_passage": tokens},
    })


def check_questions(run_dir: Path, wanted: int) -> None:
    """Stop, rather than time a smaller stage than asked for, when the prepared run holds fewer
    questions than ``--questions``."""
    path = run_dir / "questions.jsonl"
    have = sum(1 for _ in path.open()) if path.exists() else 0
    if have < wanted:
        raise SystemExit(f"the prepared run {run_dir} holds {have} questions, fewer than the {wanted} asked for "
                         "(--questions): the Wikipedia leads ran short; ask for fewer")


def run_arm(base: Path, root: Path, name: str, config: dict[str, Any], execution: dict[str, Any],
            until: str, reference: Path) -> dict[str, Any]:
    """A copy of the prepared run directory (no cache), run to ``until`` under ``execution``;
    the first arm run becomes ``reference``, whose files every later arm is compared with."""
    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("cache", ".selflearn.lock"))
    t0 = time.perf_counter()
    outcomes = Pipeline({**config, "run_dir": str(run_dir), "execution": execution}).run(until=until)
    wall = time.perf_counter() - t0
    stages = {o.name: round(o.seconds, 2) for o in outcomes if o.status == "ran"}
    workers = {o.name: o.summary.get("execution", {}).get("per_worker") for o in outcomes if o.status == "ran"}
    files = [f for f in ("questions.jsonl", "generations.jsonl", "scores.jsonl") if (run_dir / f).exists()]
    if not reference.exists():
        reference.mkdir(parents=True)
        for f in files:
            shutil.copy(run_dir / f, reference / f)
    same = {f: (run_dir / f).read_bytes() == (reference / f).read_bytes() for f in files}
    shutil.rmtree(run_dir / "cache", ignore_errors=True)  # keep the disk small over many arms
    return {"execution": execution, "wall_s": round(wall, 2), "stages_s": stages, "per_worker": workers,
            "outputs": same}


def arms_for(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The arms, each run ``--repeats`` times in rotating order (so that neither engine always
    runs first, on a colder machine)."""
    if args.cpu:
        return [("ray-1", {"engine": "ray", "workers": 1, "shard_size": 2}),
                ("ray-2", {"engine": "ray", "workers": 2, "shard_size": 2}),
                ("local", {"engine": "local", "shard_size": 2})]
    arms: list[tuple[str, dict[str, Any]]] = [("local", {"engine": "local"}), ("ray-1", {"engine": "ray", "workers": 1})]
    if args.fractional:  # two workers sharing the one GPU (issue 17's one-GPU run)
        arms.append(("ray-2x0.5gpu", {"engine": "ray", "workers": 2, "num_gpus": 0.5}))
    return arms


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarise(runs: dict[str, list[dict[str, Any]]], stage: str) -> dict[str, Any]:
    """Per arm: the stage's seconds in each repeat, their median, and whether every repeat wrote
    the same files as the reference arm's first run."""
    return {name: {"stage_s": [r["stages_s"].get(stage) for r in rs],
                   "median_stage_s": round(median([r["stages_s"][stage] for r in rs]), 2),
                   "median_wall_s": round(median([r["wall_s"] for r in rs]), 2),
                   "same_outputs": all(all(r["outputs"].values()) for r in rs)}
            for name, rs in runs.items()}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cpu", action="store_true", help="2 Ray workers against 1 on the reduced default")
    mode.add_argument("--gpu", action="store_true", help="Ray (1 worker) against local, generations at paper shape")
    ap.add_argument("--out", default="runs/bench-ray", help="folder for the runs and ray.json")
    ap.add_argument("--questions", type=int, default=256, help="--gpu: questions answered")
    ap.add_argument("--model", default=None, help="--gpu: the model (default: the run's default model)")
    ap.add_argument("--k", type=int, default=10, help="--gpu: samples with and without the passage")
    ap.add_argument("--max-new-tokens", type=int, default=384, help="--gpu: most new tokens per answer")
    ap.add_argument("--batch-size", type=int, default=640, help="--gpu: the hf backend's sequences per pass")
    ap.add_argument("--chunk-size", type=int, default=64, help="--gpu: questions per generations shard")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each arm, in rotating order")
    ap.add_argument("--fractional", action="store_true", help="--gpu: also 2 workers at num_gpus 0.5")
    ap.add_argument("--fresh", action="store_true",
                    help="run every arm in a new Python process, as `selflearn run` from the shell would: "
                         "local then pays its own model load and compilation too")
    ap.add_argument("--arms", default="", help="only these arms (comma-separated names); results of earlier "
                    "invocations in --out are kept, so a long comparison can be split over several calls")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)  # NAME:REPEAT, run by --fresh
    return ap.parse_args()


def one_arm(args: argparse.Namespace, root: Path, config: dict[str, Any], until: str, name: str, rep: int) -> dict[str, Any]:
    """Run arm ``name`` once (here, or with ``--fresh`` in a new process) and store its result
    under ``results/``, where the summary collects every result of this output folder."""
    out = root / "results" / f"{name}-{rep}.json"
    out.parent.mkdir(exist_ok=True)
    if args.fresh and not args.child:
        subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", f"{name}:{rep}"],
                       check=True)
    else:
        execution = dict(arms_for(args))[name]
        result = run_arm(root / "base", root, f"{name}-{rep}", config, execution, until, reference=root / "reference")
        out.write_text(json.dumps(result, indent=2) + "\n")
    result = json.loads(out.read_text())
    print(f"{name} (repeat {rep}): {json.dumps(result['stages_s'])}", flush=True)
    return result


def collected(root: Path, arms: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Every stored result per arm, in repeat order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, _ in arms:
        files = sorted((root / "results").glob(f"{name}-*.json"), key=lambda f: int(f.stem.rsplit("-", 1)[1]))
        if files:
            runs[name] = [json.loads(f.read_text()) for f in files]
    return runs


def report(args: argparse.Namespace, root: Path, stage: str, arms: list[tuple[str, dict[str, Any]]]) -> None:
    """ray.json and the Markdown table, over every result in ``--out``."""
    runs = collected(root, arms)
    summary = summarise(runs, stage)
    result: dict[str, Any] = {"mode": "cpu" if args.cpu else "gpu", "cpus": os.cpu_count(), "stage": stage,
                              "fresh_processes": args.fresh, "summary": summary, "runs": runs}
    if args.gpu and "local" in summary and len(summary) > 1:
        local = summary["local"]["median_stage_s"]
        result["ray_overhead_percent"] = {
            name: round(100 * (s["median_stage_s"] - local) / local, 2) for name, s in summary.items() if name != "local"}
    (root / "ray.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"| arm | execution | {stage} s (median) | runs | wall s (median) | same outputs |")
    print("|---|---|---|---|---|---|")
    for name, execution in arms:
        if name in summary:
            s = summary[name]
            print(f"| {name} | {json.dumps(execution)} | {s['median_stage_s']} | {s['stage_s']} | "
                  f"{s['median_wall_s']} | {s['same_outputs']} |")
    if "ray_overhead_percent" in result:
        print(f"\nRay's overhead on the {stage} stage, in percent of local: {result['ray_overhead_percent']}")


def main() -> None:
    # its arms start Ray workers after the tokenizers ran: keep the tokenizers' fork warning out
    # of the log (set here, not at import: paper_scale.py imports this module and its NLI
    # tokenisation needs the thread pool, run 21)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args()
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = root / "base"
    if args.cpu:
        config, prepare, until, stage = reduced_default(str(base), shard=2), "passages", "scores", "generations"
    else:
        config = paper_shape(str(base), args.model, args.questions, args.k, args.max_new_tokens, args.batch_size,
                             args.chunk_size)
        prepare, until, stage = "questions", "generations", "generations"
    if args.child:
        name, rep = args.child.split(":")
        one_arm(args, root, config, until, name, int(rep))
        return
    Pipeline(config).run(until=prepare)  # resumes: the same base in every invocation
    if args.gpu:
        check_questions(base, args.questions)
    arms = arms_for(args)
    chosen = [a for a in arms if not args.arms or a[0] in args.arms.split(",")]
    for rep in range(args.repeats):
        for i in range(len(chosen)):
            name, _ = chosen[(i + rep) % len(chosen)]
            done = len(list((root / "results").glob(f"{name}-*.json")))
            one_arm(args, root, config, until, name, done)
    report(args, root, stage, arms)


if __name__ == "__main__":
    main()
