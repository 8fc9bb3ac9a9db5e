"""Issue 20's measurement: selection at a fixed number of epochs, and two rounds against one.

    python examples/reproduction/epochs_rounds.py                        # both parts, seeds 1 2 3
    python examples/reproduction/epochs_rounds.py --parts epochs --seeds 1
    python examples/reproduction/epochs_rounds.py --report-only          # tables and plot again

The recipe is the reproduction's (base.yaml: questions by SmolLM2-135M-Instruct itself, K = 10,
MiniLM scorer, DPO lr 5e-6, beta 0.3, batch 32), at the scale of epochs_rounds.yaml (merged over
base.yaml; ``--set`` overrides either). Two parts, every arm over the training seeds:

(A) ``epochs``: the last reproduction trained the filtered sets 33-50 epochs and the unfiltered
    set 5 (300 steps each), which confounds selection with repetition. Here every arm is
    DPO-trained ``--epochs`` E epochs (``num_train_epochs``, no step limit) from the seed's SFT
    model: ``filtered`` (tau_L = tau_K = 0.5), ``unfiltered`` (both filters off) and ``random``
    (no filter, a seeded random sample of as many questions as the filtered arm kept, read from
    the filtered arm's ``dpo_pairs.jsonl`` when the arm starts). As in reproduce.py (whose
    functions this reuses) the data stages run once in ``<root>/data``, each arm's run directory
    starts as a copy of it, the first arm of a seed trains the SFT model and the others reuse it.
    Paired change: each DPO model against its own seed's SFT model.
(B) ``rounds``: ``rounds.count 2`` (``passages: fresh+unknown``, docs/rounds.md) with S/2 DPO
    steps per round against one round (``rounds.count 1``) over the same training documents with
    S steps (``--steps``). Rounds train DPO only (``sft_trainer: null``): an SFT step in every
    round would give the two-round model two SFT passes. Both start from the original model,
    whose data stages they share with (A) through the cache (same documents, questions and
    model), so only round 2's data is new per seed. Paired change: the final model against the
    original model (round 2's ``vs-base`` evaluation); round 1 of the two is reported too.
    The filters are ``--rounds-filters`` (default: filtered, the method's setting).

Everything is resumable: the same command after a kill, or after ``--deadline-minutes`` stopped
it (exit code 3), goes on from the run directories. ``--jobs N`` runs N seeds at once, each in
its own process with its own copy of the cache (made once from the data stages' cache; a cache
is an append-only file that one process writes), the hf backend then decoding at most
WORKER_BATCH rows at a time so that three processes share one GPU's memory. ``<root>/results/``
receives ``results.json``, ``results.md`` and ``epochs_rounds.png`` (paired changes, mean +- sd
over seeds and every seed); the Markdown table is printed.

GPU time on one H100, from the rates of docs/results.md's wall-time table (2,000 passages,
K = 10: questions 15 ms a question, generations 50k tokens/s, scores 1,900 sentences/s, DPO
~0.3 s a step of 32 pairs, SFT ~0.5 s a step; a training's load and save ~12 s, an
evaluation's model ~10 s). Scale (epochs_rounds.yaml): 5 topics x 80 leads = N = 400 training
passages (B: 200 per round), 50 held-out, K = 10; E = 5; S = 40; 200 FanOutQA and 200 trivia
questions.

* data stages, once: 450 questions 7 s; 400 x 21 generations (0.6 M tokens) 12 s; 21,600
  sentences 12 s; passages and the GGUF conversion 35 s: ~70 s, plus ~20 s of imports.
* (A) per seed: SFT on ~400 rows, 13 steps: ~22 s. DPO: unfiltered ~390 pairs x 5 / 32 = 61
  steps, filtered and random ~57 pairs (14%, as in docs/results.md) = 10 steps each: 81 x
  0.3 s + 3 x 12 s = 60 s. datasets: the SFT self-labels once, ~7 s. evaluate: the SFT model
  and 3 DPO models at ~10 s + ~2 s a run: 46 s. Together ~135 s.
* (B) per seed: one round: 40 DPO steps 24 s, evaluation of the original model and its model
  20 s, cached data stages 4 s. Two rounds: round 1 (20 steps) 18 s + evaluation 10 s + 4 s;
  round 2's data with round 1's model (200 fresh + ~195 carried questions): questions 11 s,
  generations 13 s, scores 11 s; 20 steps 18 s; evaluation 10 s + vs-base 3 s. ~145 s.
* one seed after another: 90 + 3 x 280 s = ~15.5 minutes, more than one 10-minute call.
  With ``--jobs 3``: 90 s + ~15 s of imports + 280 s stretched by three processes sharing the
  GPU (their steps are mostly launch- and CPU-bound; guessed 1.3-1.7x): ~8-10 minutes. The
  GPU call (gpu_session.sh rounds) starts no new run after 6.5 minutes and stops at 550 s, so
  that the tables are written; a further call of the same command resumes what was left.
  Measured (docs/results.md): 429 s on one H100 for both parts and three seeds with --jobs 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reproduce as rp  # noqa: E402  (the reproduction's driver: merge, data run, figures)

#: part A's arms, in the order they run (random reads the filtered arm's kept count)
EPOCH_ARMS = ("filtered", "unfiltered", "random")
FILTERS: dict[str, dict[str, Any]] = {
    "filtered": {"consistency_filter": True, "knowledge_filter": True, "max_questions": None},
    "unfiltered": {"consistency_filter": False, "knowledge_filter": False, "max_questions": None},
}
#: rows the hf backend decodes at once in each of several processes (--jobs > 1)
WORKER_BATCH = 1024
#: part B's arms: rounds.count of each
ROUND_ARMS = {"one-round": 1, "two-rounds": 2}
#: what the tables report: (figure key or QA-set prefix, label, shown in percent)
METRICS = (
    ("test_disagreement", "held-out disagreement (lower better)", False),
    ("known_disagreement", "known-item disagreement (lower better)", False),
    ("qa:fanoutqa", "FanOutQA contains %", True),
    ("qa:trivia", "trivia contains %", True),
)


def log(msg: str) -> None:
    tag = os.environ.get("EPOCHS_ROUNDS_TAG")
    print(f"[epochs_rounds{' ' + tag if tag else ''} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_base(config: str, scale: str | None, sets: list[str]) -> dict[str, Any]:
    """base.yaml with the scale overlay merged over it, then the ``--set`` overrides."""
    with open(config, encoding="utf-8") as f:
        base = yaml.safe_load(f)
    if scale:
        with open(scale, encoding="utf-8") as f:
            base = rp.merge(base, yaml.safe_load(f) or {})
    rp.apply_sets(base, sets)
    return base


def _with_options(slot: Any, options: dict[str, Any], path: str) -> dict[str, Any]:
    """A ``{use: NAME, options: {...}}`` slot with ``options`` merged into its options."""
    if not isinstance(slot, dict) or "use" not in slot:
        raise SystemExit(f"{path} must be given as {{use: NAME, options: {{...}}}} here, got {slot!r}")
    return {**slot, "options": {**(slot.get("options") or {}), **options}}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one invocation runs: the settings, where, which parts, until when."""

    base: dict[str, Any]
    root: str
    parts: tuple[str, ...] = ("epochs", "rounds")
    epochs: float = 5.0
    steps: int = 40
    filters: str = "filtered"
    #: time.time() after which no new run starts (None: no limit)
    deadline: float | None = None
    #: the cache directory (None: ``<root>/cache``, shared by every seed of this process)
    cache: str | None = None

    @property
    def cache_dir(self) -> str:
        return self.cache or os.path.join(self.root, "cache")

    def finish(self, cfg: dict[str, Any], run_dir: str, name: str, seed: int) -> dict[str, Any]:
        cfg.update(run_dir=run_dir, cache_dir=self.cache_dir, name=name)
        cfg["train"] = {**(cfg.get("train") or {}), "seed": seed}
        return cfg


def epochs_dir(root: str, arm: str, seed: int) -> str:
    return os.path.join(root, "epochs", arm, f"seed{seed}")


def rounds_dir(root: str, arm: str, seed: int) -> str:
    return os.path.join(root, "rounds", arm, f"seed{seed}")


def epochs_config(plan: Plan, arm: str, seed: int, kept: int | None = None) -> dict[str, Any]:
    """Part A's arm for one seed: SFT, then DPO from the SFT model for ``plan.epochs`` epochs
    of the arm's pairs (``max_steps: -1``); ``random`` samples ``kept`` questions, unfiltered."""
    datasets = dict(FILTERS["filtered" if arm == "filtered" else "unfiltered"])
    if arm == "random":
        if not kept:
            raise SystemExit("the random arm needs the filtered arm's kept count, and the filtered "
                             f"arm kept {kept!r} questions; loosen datasets.tau_l / tau_k with --set")
        datasets["max_questions"] = kept
    cfg = rp.merge(plan.base, {"datasets": datasets})
    cfg["trainer"] = _with_options(cfg.get("trainer"), {"num_train_epochs": plan.epochs, "max_steps": -1},
                                   "trainer")
    return plan.finish(cfg, epochs_dir(plan.root, arm, seed), f"epochs-{arm}-seed{seed}", seed)


def rounds_config(plan: Plan, arm: str, seed: int) -> dict[str, Any]:
    """Part B's arm for one seed: ``rounds.count`` 1 or 2 over the same training documents,
    ``plan.steps`` DPO steps in all (split evenly over the rounds), DPO only."""
    count = ROUND_ARMS[arm]
    if plan.steps % count:
        raise SystemExit(f"--steps {plan.steps} cannot be split evenly over {count} rounds")
    cfg = rp.merge(plan.base, {"datasets": FILTERS[plan.filters]})
    cfg["sft_trainer"] = None
    cfg["trainer"] = _with_options(cfg.get("trainer"), {"max_steps": plan.steps // count}, "trainer")
    cfg["rounds"] = {"count": count, "passages": "fresh+unknown", "min_pairs": 1,
                     "compare_with_base": True, "heldout_scores": False}
    return plan.finish(cfg, rounds_dir(plan.root, arm, seed), f"rounds-{arm}-seed{seed}", seed)


def kept_questions(run_dir: str) -> int:
    """Distinct questions among a run's DPO pairs."""
    with open(os.path.join(run_dir, "dpo_pairs.jsonl"), encoding="utf-8") as f:
        return len({json.loads(line)["question_id"] for line in f if line.strip()})


def _late(deadline: float | None) -> bool:
    if deadline is not None and time.time() > deadline:
        log("deadline reached: run the same command again to go on")
        return True
    return False


def run_epochs(plan: Plan, seed: int) -> bool:
    """Part A for one seed (False when the deadline stopped it)."""
    from selflearn import Pipeline

    sft: str | None = None
    for arm in EPOCH_ARMS:
        if _late(plan.deadline):
            return False
        kept = kept_questions(epochs_dir(plan.root, "filtered", seed)) if arm == "random" else None
        cfg = epochs_config(plan, arm, seed, kept)
        rp.prepare_arm_dir(plan.root, cfg["run_dir"], sft)
        log(f"epochs: {arm}, seed {seed}" + (f" ({kept} questions)" if kept else ""))
        Pipeline.from_config(cfg).run()
        sft = sft or os.path.join(cfg["run_dir"], "models", "sft")
    return True


def run_rounds(plan: Plan, seed: int) -> bool:
    """Part B for one seed (False when the deadline stopped it)."""
    from selflearn import Pipeline

    for arm in ROUND_ARMS:
        if _late(plan.deadline):
            return False
        cfg = rounds_config(plan, arm, seed)
        log(f"rounds: {arm}, seed {seed}")
        Pipeline.from_config(cfg).run()
    return True


def run_seeds(plan: Plan, seeds: list[int]) -> bool:
    """Seed by seed, part A then part B (the data stages done); False when the deadline stopped it."""
    for seed in seeds:
        if "epochs" in plan.parts and not run_epochs(plan, seed):
            return False
        if "rounds" in plan.parts and not run_rounds(plan, seed):
            return False
    return True


def run_all(plan: Plan, seeds: list[int]) -> bool:
    """The data stages, then every seed in this process."""
    rp.run_data(plan.base, plan.root)
    return run_seeds(plan, seeds)


# -- one process per seed -------------------------------------------------------------------
def seed_cache(root: str, seed: int) -> str:
    """A seed worker's own copy of the shared cache, made once: a cache is an append-only file
    that one process writes (and trims a torn last line of when it opens it)."""
    path = os.path.join(root, f"cache-seed{seed}")
    if not os.path.exists(path):
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(os.path.join(root, "cache"), tmp)
        os.rename(tmp, path)
    return path


def worker_argv(args: argparse.Namespace, seed: int, deadline: float | None) -> list[str]:
    """The command line of seed ``seed``'s worker: this script with the same settings."""
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--config", args.config,
            "--scale", args.scale, "--root", args.root, "--seeds", str(seed), "--parts", *args.parts,
            "--epochs", str(args.epochs), "--steps", str(args.steps), "--rounds-filters", args.rounds_filters]
    for item in args.set:
        argv += ["--set", item]
    if deadline is not None:
        argv += ["--deadline-minutes", f"{max(0.0, deadline - time.time()) / 60:.4f}"]
    return argv


def worker_env(jobs: int, seed: int) -> dict[str, str]:
    env = dict(os.environ, EPOCHS_ROUNDS_TAG=f"seed{seed}")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


def _release_gpu() -> None:
    """Give the data stages' cached GPU memory back before the workers start."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def stop_workers(running: dict[int, subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    """Stop the seed workers still running when this process stops early (Ctrl-C, SIGTERM,
    an error): left running, a worker would go on writing its run directories while the same
    command, run again to resume, starts another worker on them. What they wrote is kept: the
    next call resumes it."""
    for proc in running.values():
        if proc.poll() is None:
            proc.terminate()
    end = time.monotonic() + grace_s
    for proc in running.values():
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds run_parallel, whose finally stops the workers


def run_parallel(plan: Plan, args: argparse.Namespace, jobs: int) -> str:
    """The data stages here, then each seed in a worker process, ``jobs`` at a time.
    Returns "done", "deadline" (some worker stopped at it) or "failed"."""
    rp.run_data(plan.base, plan.root)
    _release_gpu()
    pending: list[int] = list(args.seeds)
    running: dict[int, subprocess.Popen[bytes]] = {}
    codes: dict[int, int] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                seed_cache(plan.root, seed)
                log(f"seed {seed}: worker started")
                running[seed] = subprocess.Popen(worker_argv(args, seed, plan.deadline), env=worker_env(jobs, seed))
            time.sleep(0.5)
            for seed, proc in list(running.items()):
                if proc.poll() is not None:
                    codes[seed] = running.pop(seed).returncode
                    log(f"seed {seed}: worker exited with status {codes[seed]}")
    finally:
        stop_workers(running)
    if any(c not in (0, 3) for c in codes.values()):
        return "failed"
    return "deadline" if any(c == 3 for c in codes.values()) else "done"


# -- collecting ---------------------------------------------------------------------------
def _json(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _count(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def dpo_steps(run_dir: str) -> int | None:
    """Optimizer steps of a run's DPO training (``train.json``)."""
    train = _json(os.path.join(run_dir, "train.json")) or {}
    return ((train.get("metrics") or {}).get("dpo") or {}).get("global_step")


def _known_n(report: dict[str, Any]) -> Any:
    return (((report.get("known") or {}).get("disagreement") or {}).get("candidate") or {}).get("n")


def _row(part: str, arm: str, seed: int, run_dir: str, report_path: str) -> dict[str, Any] | None:
    report = _json(report_path)
    if report is None:
        return None
    return {"part": part, "arm": arm, "seed": seed, "run_dir": run_dir, "report": report_path,
            "models": report.get("models"), "known_items": _known_n(report), **rp.figures(report)}


def epochs_runs(root: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Part A's finished runs: figures, pairs, kept questions and DPO steps."""
    out = []
    for seed in seeds:
        for arm in EPOCH_ARMS:
            rd = epochs_dir(root, arm, seed)
            row = _row("epochs", arm, seed, rd, os.path.join(rd, "evaluation", "report.json"))
            if row is None:
                continue
            row.update(dpo_pairs=_count(os.path.join(rd, "dpo_pairs.jsonl")),
                       kept_questions=kept_questions(rd), dpo_steps=dpo_steps(rd))
            out.append(row)
    return out


def rounds_runs(root: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Part B's finished runs. ``two-rounds`` is round 2's model against the original model
    (``round-2/vs-base``); ``two-rounds: round 1`` is the same run after its first round."""
    out = []
    for seed in seeds:
        for arm, count in ROUND_ARMS.items():
            rd = rounds_dir(root, arm, seed)
            rounds = [os.path.join(rd, f"round-{r}") for r in range(1, count + 1)]
            steps = [dpo_steps(r) for r in rounds]
            pairs = [_count(os.path.join(r, "dpo_pairs.jsonl")) for r in rounds]
            extra = {"dpo_pairs": sum(pairs), "pairs_per_round": pairs, "steps_per_round": steps,
                     "dpo_steps": sum(s or 0 for s in steps) if all(steps) else None,
                     "stopped": (_json(os.path.join(rd, "rounds.json")) or {}).get("stopped")}
            final = os.path.join(rounds[-1], *(["vs-base"] if count > 1 else []), "evaluation", "report.json")
            row = _row("rounds", arm, seed, rd, final)
            if row is not None:
                out.append({**row, **extra})
            first = _row("rounds", f"{arm}: round 1", seed, rd,
                         os.path.join(rounds[0], "evaluation", "report.json")) if count > 1 else None
            if first is not None:
                out.append({**first, "dpo_pairs": pairs[0], "dpo_steps": steps[0]})
    return out


# -- summarising --------------------------------------------------------------------------
def value(fig: dict[str, Any], metric: str) -> float | None:
    """A metric of one model's figures (a QA set by its name's prefix: its contains accuracy)."""
    if metric.startswith("qa:"):
        for key, v in fig.items():
            if key == metric or key.startswith(metric + ":"):
                return v.get("contains")
        return None
    return fig.get(metric)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per part and arm, for each metric: the baseline, the candidate and the paired change
    (candidate minus the baseline of the same run) as mean, sd and n over seeds, and per seed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["part"], r["arm"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for (part, arm), runs in groups.items():
        steps = [float(r["dpo_steps"]) for r in runs if r.get("dpo_steps") is not None]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                                 "dpo_pairs": rp._spread([float(r["dpo_pairs"]) for r in runs]),
                                 "dpo_steps": rp._spread(steps), "metrics": {}}
        for key, _, _ in METRICS:
            base: list[Any] = [value(r["baseline"], key) for r in runs]
            cand: list[Any] = [value(r["candidate"], key) for r in runs]
            change = [rp._minus(c, b) for c, b in zip(cand, base, strict=True)]
            entry["metrics"][key] = {
                "baseline": rp._spread(base), "candidate": rp._spread(cand), "change": rp._spread(change),
                "change_per_seed": {str(r["seed"]): d for r, d in zip(runs, change, strict=True)},
            }
        out.setdefault(part, {})[arm] = entry
    return out


def checks(rows: list[dict[str, Any]], epochs: float, batch: int | None,
           split: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The pairing the comparisons rest on, per seed: the random arm trained as many questions
    as the filtered arm kept; every epochs arm trained E epochs of its training pairs (ceil(pairs
    less the trainer's evaluation split / batch) x E steps); the two-round run as many DPO steps
    in all as the one-round run."""
    by = {(r["part"], r["arm"], r["seed"]): r for r in rows}
    out: list[dict[str, Any]] = []
    for (part, arm, seed), r in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        if part == "epochs" and arm == "random" and ("epochs", "filtered", seed) in by:
            kept = by[("epochs", "filtered", seed)]["kept_questions"]
            out.append({"seed": seed, "check": "random arm size = filtered arm's kept questions",
                        "ok": r["kept_questions"] == kept, "detail": f"{r['kept_questions']} vs {kept}"})
        if part == "epochs" and batch:
            trained = train_rows(r["dpo_pairs"], split)
            want = math.ceil(epochs * math.ceil(trained / batch))
            out.append({"seed": seed, "check": f"{arm}: DPO steps = ceil(training pairs / {batch}) x {epochs:g}",
                        "ok": r["dpo_steps"] == want,
                        "detail": f"{r['dpo_steps']} vs {want} ({trained} of {r['dpo_pairs']} pairs trained on)"})
        if part == "rounds" and arm == "two-rounds" and ("rounds", "one-round", seed) in by:
            one = by[("rounds", "one-round", seed)]["dpo_steps"]
            out.append({"seed": seed, "check": "two rounds' DPO steps in all = one round's",
                        "ok": r["dpo_steps"] == one and one is not None,
                        "detail": f"{' + '.join(map(str, r['steps_per_round']))} vs {one}"})
    return out


def _cell(s: dict[str, Any], pct: bool, signed: bool = False) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    sign = "+" if signed else ""
    return f"{scale * s['mean']:{sign}.{digits}f} ± {scale * s['sd']:.{digits}f}"


def _count_cell(s: dict[str, Any]) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.0f}" if not s["sd"] else f"{s['mean']:.1f} ± {s['sd']:.1f}"


PART_TITLES = {
    "epochs": ("(A) selection at a fixed number of epochs", "SFT model (baseline)"),
    "rounds": ("(B) two rounds against one at the same number of DPO steps", "original model (baseline)"),
}


def _summary_table(part: str, arms: dict[str, Any]) -> list[str]:
    header = "| arm | seeds | DPO pairs | DPO steps | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [header, "|" + "---|" * (4 + len(METRICS))]
    first = next(iter(arms.values()))
    cells = [PART_TITLES[part][1] + ", absolute", str(len(first["seeds"])), "–", "–"]
    cells += [_cell(first["metrics"][k]["baseline"], pct) for k, _, pct in METRICS]
    lines.append("| " + " | ".join(cells) + " |")
    for arm, e in arms.items():
        cells = [f"{arm}: change", str(len(e["seeds"])), _count_cell(e["dpo_pairs"]), _count_cell(e["dpo_steps"])]
        cells += [_cell(e["metrics"][k]["change"], pct, signed=True) for k, _, pct in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _seed_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| part | arm | seed | DPO pairs | DPO steps | known items | "
             + " | ".join(f"{label}: before → after" for _, label, _ in METRICS) + " |",
             "|" + "---|" * (6 + len(METRICS))]
    for r in rows:
        cells = [r["part"], r["arm"], str(r["seed"]), str(r["dpo_pairs"]),
                 " + ".join(map(str, r.get("steps_per_round") or [r.get("dpo_steps")])),
                 "–" if r.get("known_items") is None else str(r["known_items"])]
        for key, _, pct in METRICS:
            b, c = value(r["baseline"], key), value(r["candidate"], key)
            if b is None or c is None:
                cells.append("n/a")
                continue
            scale, digits = (100.0, 1) if pct else (1.0, 3)
            cells.append(f"{scale * b:.{digits}f} → {scale * c:.{digits}f} ({scale * (c - b):+.{digits}f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]], chk: list[dict[str, Any]],
             settings: dict[str, Any]) -> str:
    """The tables: per part the baseline and each arm's paired change (mean ± sd over seeds),
    then every run, then the pairing checks."""
    lines = [f"Settings: {json.dumps(settings, sort_keys=True)}", ""]
    for part, arms in summary.items():
        lines += [f"### {PART_TITLES[part][0]}", "", *_summary_table(part, arms), ""]
    if rows:
        lines += ["### Every run (paired: before = the run's baseline model)", "", *_seed_table(rows), ""]
    if chk:
        lines += ["### Checks", ""] + [f"- seed {c['seed']}: {c['check']}: {'ok' if c['ok'] else 'FAILED'} "
                                       f"({c['detail']})" for c in chk]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out_dir: str) -> str:
    """One panel per metric: each arm's paired change, mean ± sd over seeds, every seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [(part, arm) for part, group in summary.items() for arm in group]
    colours = {"epochs": "#4477aa", "rounds": "#228833"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 4.2), squeeze=False)
    for ax, (key, label, pct) in zip(axes[0], METRICS, strict=True):
        scale = 100.0 if pct else 1.0
        if all(summary[p][a]["metrics"][key]["change"]["mean"] is None for p, a in arms):
            ax.text(0.5, 0.5, "no items", ha="center", va="center", transform=ax.transAxes)
        for x, (part, arm) in enumerate(arms):
            m = summary[part][arm]["metrics"][key]
            if x and part != arms[x - 1][0]:
                ax.axvline(x - 0.5, color="#999999", linestyle=":", linewidth=0.8)
            if m["change"]["mean"] is None:
                continue
            ax.bar(x, scale * m["change"]["mean"], yerr=scale * m["change"]["sd"], capsize=3,
                   color=colours[part], alpha=0.55 if ": round 1" in arm else 0.9)
            seeds = [v for v in m["change_per_seed"].values() if v is not None]
            ax.plot([x] * len(seeds), [scale * v for v in seeds], "k.", markersize=4)
        ax.axhline(0.0, color="#555555", linewidth=0.8)
        ax.set_xticks(range(len(arms)), [f"{'A' if p == 'epochs' else 'B'}: {a}" for p, a in arms],
                      rotation=35, ha="right", fontsize=7)
        ax.set_title(f"change in {label}" + (" (points)" if pct else ""), fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct: paired change against the baseline model "
                 "(A: vs the seed's SFT model; B: vs the original model); mean ± sd, dots = seeds", fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "epochs_rounds.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(root: str, seeds: list[int], settings: dict[str, Any]) -> str:
    """``<root>/results/``: results.json, results.md and epochs_rounds.png; prints the tables."""
    out_dir = os.path.join(root, "results")
    os.makedirs(out_dir, exist_ok=True)
    rows = epochs_runs(root, seeds) + rounds_runs(root, seeds)
    summary = summarise(rows)
    chk = checks(rows, settings["epochs"], settings.get("dpo_batch"), settings.get("dpo_eval_split"))
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "summary": summary, "checks": chk, "runs": rows}, f, indent=2, sort_keys=True)
    md = markdown(summary, rows, chk, settings)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    if rows:
        plot(summary, out_dir)
    print(md)
    return out_dir


def _eval_split(trainer: dict[str, Any]) -> dict[str, Any]:
    """The trainer's held-out evaluation share (its options, else the trainers' defaults): the
    pairs it holds out are not trained on, so they are not in the steps of an epoch."""
    from selflearn.builtin.trainers.common import CommonOptions

    defaults = CommonOptions()
    return {"fraction": trainer.get("eval_fraction", defaults.eval_fraction),
            "min_rows": trainer.get("min_eval_rows", defaults.min_eval_rows)}


def train_rows(pairs: int, split: dict[str, Any] | None) -> int:
    """How many of ``pairs`` the trainer trains on (the rest are its evaluation split), by the
    trainers' own split rule."""
    if not split:
        return pairs
    from selflearn.builtin.trainers.common import split_rows

    return len(split_rows([{}] * pairs, split["fraction"], split["min_rows"], 0)[0])


def settings_of(base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """What the results were measured with (recorded in results.json and the table)."""
    trainer = (base.get("trainer") or {}).get("options") or {}
    batch = trainer.get("per_device_train_batch_size")
    accumulate = trainer.get("gradient_accumulation_steps", 1)
    return {"epochs": args.epochs, "steps": args.steps, "rounds_filters": args.rounds_filters,
            "seeds": args.seeds, "parts": args.parts, "source": (base.get("source") or {}).get("options"),
            "k": (base.get("generations") or {}).get("k"),
            "dpo_batch": batch * accumulate if batch else None,
            "dpo_eval_split": _eval_split(trainer),
            "tau": {k: (base.get("datasets") or {}).get(k) for k in ("tau_l", "tau_k")}}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(HERE, "base.yaml"))
    parser.add_argument("--scale", default=os.path.join(HERE, "epochs_rounds.yaml"),
                        help="overlay merged over --config ('none': none)")
    parser.add_argument("--root", default="runs/epochs-rounds")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--parts", nargs="*", choices=["epochs", "rounds"], default=["epochs", "rounds"])
    parser.add_argument("--epochs", type=float, default=5.0, help="(A) DPO epochs of every arm")
    parser.add_argument("--steps", type=int, default=40, help="(B) DPO steps in all (two rounds: half each)")
    parser.add_argument("--rounds-filters", choices=sorted(FILTERS), default="filtered")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override a setting, e.g. --set source.options.train_per_category=4")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at once, each in its own process with its own copy of the cache "
                             f"(GPU: 3; the hf backend then decodes at most {WORKER_BATCH} rows at a time, "
                             "which enters the stages' fingerprints: resume with the same --jobs)")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="start no new run after this many minutes (then run again)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.steps < 2 or args.steps % 2 or args.epochs <= 0 or args.jobs < 1:
        parser.error("--steps must be even and at least 2, --epochs positive, --jobs at least 1 "
                     f"(got {args.steps}, {args.epochs}, {args.jobs})")
    tag = os.environ.get("EPOCHS_ROUNDS_TAG")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {tag + ' ' if tag else ''}%(name)s %(message)s",
                        datefmt="%H:%M:%S")
    base = load_base(args.config, None if args.scale == "none" else args.scale, args.set)
    if args.jobs > 1 and "batch_size" not in ((base.get("backend") or {}).get("options") or {}):
        args.set = [*args.set, f"backend.options.batch_size={WORKER_BATCH}"]  # several processes share the GPU
        base = load_base(args.config, None if args.scale == "none" else args.scale, args.set)
    deadline = None if args.deadline_minutes is None else time.time() + 60 * args.deadline_minutes
    plan = Plan(base, args.root, tuple(args.parts), args.epochs, args.steps, args.rounds_filters, deadline,
                seed_cache(args.root, args.seeds[0]) if args.worker else None)
    if args.worker:  # one seed, the data stages done by the process that started it
        return 0 if run_seeds(plan, args.seeds) else 3
    status = "done"
    if args.jobs > 1 and not args.report_only:
        signal.signal(signal.SIGTERM, _terminated)
        status = run_parallel(plan, args, args.jobs)
    elif not args.report_only:
        status = "done" if run_all(plan, args.seeds) else "deadline"
    out = report(args.root, args.seeds, settings_of(base, args))
    log(f"results in {out}" + ("" if status == "done" else f" (partial: {status})"))
    return {"done": 0, "deadline": 3}.get(status, 1)


if __name__ == "__main__":
    sys.exit(main())
