"""Run the small-scale reproduction (docs/results.md): every arm x seed through selflearn's Pipeline.

    python examples/reproduction/reproduce.py                      # all arms, seeds 1 2 3
    python examples/reproduction/reproduce.py --arms dpo-tau0.5 --seeds 2   # one row
    python examples/reproduction/reproduce.py --report-only        # tables and plots again

1. The data stages (documents .. scores) run once, in ``<root>/data``: they do not depend on the
   arm or on the training seed (the top-level ``seed`` stays 42, ``train.seed`` varies).
2. Each arm x seed gets its own run directory ``<root>/<arm>/seed<s>``, started as a copy of
   the data run; the pipeline sees those stages done (same fingerprints) and runs datasets,
   train and evaluate. All runs share one cache directory, so the SFT self-labels, the SFT
   model's answers and its detection samples are computed once per seed.
3. The SFT model depends on the seed but not on the arm: the first arm of a seed trains it and
   the other arms get a copy, which the train stage recognises (same rows, trainer, model and
   seed in its lineage) and reuses.
4. ``<root>/results/`` receives ``results.json``, ``results.md`` and PNG plots.

Everything is resumable: run the same command again after a kill.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import sys
import time
from typing import Any

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_STAGES = ("documents", "passages", "questions", "generations", "scores")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def arm_config(base: dict[str, Any], overlay: dict[str, Any], root: str, arm: str, seed: int) -> dict[str, Any]:
    cfg = merge(base, overlay)
    cfg["run_dir"] = os.path.join(root, arm, f"seed{seed}")
    cfg["cache_dir"] = os.path.join(root, "cache")
    cfg["train"] = {**cfg.get("train", {}), "seed": seed}
    cfg["name"] = f"reproduction-{arm}-seed{seed}"
    return cfg


def log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_data(base: dict[str, Any], root: str) -> None:
    from selflearn import Pipeline

    cfg = merge(base, {"run_dir": os.path.join(root, "data"), "cache_dir": os.path.join(root, "cache"),
                       "name": "reproduction-data"})
    log("data stages: documents .. scores")
    Pipeline.from_config(cfg).run(until="scores")


def prepare_arm_dir(root: str, run_dir: str, sft_from: str | None) -> None:
    """Start an arm's run directory as a copy of the data run (and of the seed's SFT model)."""
    if not os.path.exists(os.path.join(run_dir, "manifest.json")):
        shutil.copytree(os.path.join(root, "data"), run_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("cache"))
    if sft_from and os.path.exists(os.path.join(sft_from, "selflearn-lineage.json")):
        dest = os.path.join(run_dir, "models", "sft")
        if not os.path.exists(os.path.join(dest, "selflearn-lineage.json")):
            shutil.copytree(sft_from, dest, dirs_exist_ok=True)


def run_arms(base: dict[str, Any], arms: dict[str, Any], names: list[str], seeds: list[int], root: str,
             deadline: float | None) -> bool:
    """Run every arm x seed; False when the deadline stopped it before the end."""
    from selflearn import Pipeline

    for seed in seeds:
        sft_model: str | None = None
        for arm in names:
            if deadline is not None and time.time() > deadline:
                log("deadline reached: run the same command again to go on")
                return False
            cfg = arm_config(base, arms[arm], root, arm, seed)
            prepare_arm_dir(root, cfg["run_dir"], sft_model)
            log(f"arm {arm}, seed {seed}: {cfg['run_dir']}")
            Pipeline.from_config(cfg).run()
            sft_model = sft_model or os.path.join(cfg["run_dir"], "models", "sft")
    return True


# -- the report ---------------------------------------------------------------------------
def _read(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _count(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per role (baseline, candidate) the means of an ``evaluation/report.json``: held-out and
    known-item disagreement, and each QA set's contains / exact / f1."""
    out: dict[str, dict[str, Any]] = {}
    for role in ("baseline", "candidate"):
        fig: dict[str, Any] = {}
        for set_name in ("test", "known"):
            block = (report.get(set_name) or {}).get("disagreement")
            if block:
                fig[f"{set_name}_disagreement"] = block[role]["mean"]
        for qa_name, q in (report.get("qa") or {}).items():
            fig[f"qa:{qa_name}"] = {m: q[role][m]["mean"] for m in ("contains", "exact", "f1")}
        out[role] = fig
    return out


def collect(root: str, names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per arm and seed: the figures of its evaluation report, its data sizes and stage times."""
    runs: dict[str, dict[str, Any]] = {}
    for arm in names:
        for seed in seeds:
            rd = os.path.join(root, arm, f"seed{seed}")
            rp = os.path.join(rd, "evaluation", "report.json")
            if not os.path.exists(rp):
                continue
            report = _read(rp)
            manifest = _read(os.path.join(rd, "manifest.json"))
            summary = _read(os.path.join(rd, "datasets_summary.json"))
            row: dict[str, Any] = {"arm": arm, "seed": seed, "run_dir": rd,
                                   "dpo_pairs": _count(os.path.join(rd, "dpo_pairs.jsonl")),
                                   "sft_rows": _count(os.path.join(rd, "sft.jsonl")),
                                   "datasets": {k: summary.get(k) for k in ("removed", "would_fail", "thresholds")
                                                if k in summary},
                                   "seconds": {s: (manifest.get("stages", {}).get(s) or {}).get("seconds")
                                               for s in ("datasets", "train", "evaluate")}}
            row.update(figures(report))
            row["detection"] = report.get("detection")
            runs[f"{arm}/seed{seed}"] = row
    data_manifest = os.path.join(root, "data", "manifest.json")
    data: dict[str, Any] = {}
    if os.path.exists(data_manifest):
        man = _read(data_manifest)
        data["seconds"] = {s: (man.get("stages", {}).get(s) or {}).get("seconds") for s in DATA_STAGES}
        data["summaries"] = {s: (man.get("stages", {}).get(s) or {}).get("summary") for s in DATA_STAGES}
    return {"runs": runs, "data": data}


def _spread(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(vals), "mean": statistics.fmean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "min": min(vals), "max": max(vals)}


def table(collected: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Mean and spread over seeds of each arm's figures; ``sft-only`` from the baselines."""
    runs = list(collected["runs"].values())
    metrics: list[str] = []
    for r in runs:
        for k, v in r["candidate"].items():
            keys = [f"{k}.{m}" for m in v] if isinstance(v, dict) else [k]
            metrics += [m for m in keys if m not in metrics]

    def value(fig: dict[str, Any], metric: str) -> Any:
        head, _, tail = metric.partition(".")
        v = fig.get(head) if tail else fig.get(metric)
        return v.get(tail) if (tail and isinstance(v, dict)) else v

    rows: dict[str, Any] = {}
    first = names[0] if names else None
    sft = [r for r in runs if r["arm"] == first]
    rows["sft-only"] = {m: _spread([value(r["baseline"], m) for r in sft]) for m in metrics}
    rows["sft-only"]["dpo_pairs"] = _spread([0.0 for _ in sft])
    for arm in names:
        sel = [r for r in runs if r["arm"] == arm]
        rows[arm] = {m: _spread([value(r["candidate"], m) for r in sel]) for m in metrics}
        rows[arm]["dpo_pairs"] = _spread([float(r["dpo_pairs"]) for r in sel])
    # per run, candidate minus its own SFT baseline (the same seed, the same machine): the
    # paired effect of DPO, free of the differences between SFT models
    delta: dict[str, Any] = {}
    for arm in names:
        sel = [r for r in runs if r["arm"] == arm]
        delta[arm] = {m: _spread([_minus(value(r["candidate"], m), value(r["baseline"], m)) for r in sel])
                      for m in metrics}
    det: dict[str, Any] = {}
    for r in sft:
        d = r.get("detection") or {}
        for set_name, entry in (d.get("sets") or {}).items():
            for scorer, res in entry["scorers"].items():
                det.setdefault(set_name, {}).setdefault(scorer, []).append(res["auroc"])
            det.setdefault(set_name, {}).setdefault("_wrong_rate", []).append(entry["wrong_rate"])
    detection = {s: {k: _spread(v) for k, v in d.items()} for s, d in det.items()}
    return {"metrics": metrics, "rows": rows, "delta": delta, "detection": detection}


def _minus(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a - b


def _fmt(s: dict[str, Any], pct: bool = False, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    if pct:
        return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def markdown(tab: dict[str, Any], collected: dict[str, Any]) -> str:
    rows = tab["rows"]
    lines = ["| arm | DPO pairs | held-out disagreement (lower better) | known-item disagreement | "
             + " | ".join(f"{m.split(':', 1)[1].split('.')[0][:24]} {m.rsplit('.', 1)[1]} %"
                          for m in tab["metrics"] if m.startswith("qa:") and m.endswith(".contains"))
             + " |"]
    qa_metrics = [m for m in tab["metrics"] if m.startswith("qa:") and m.endswith(".contains")]
    lines.append("|" + "---|" * (4 + len(qa_metrics)))
    for arm, r in rows.items():
        cells = [arm, _fmt(r["dpo_pairs"], digits=0), _fmt(r.get("test_disagreement", {})),
                 _fmt(r.get("known_disagreement", {}))]
        cells += [_fmt(r.get(m, {}), pct=True) for m in qa_metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Change against the arm's own SFT model (candidate minus baseline, per seed):", "",
              lines[0].replace("| DPO pairs ", ""), "|" + "---|" * (3 + len(qa_metrics))]
    for arm, r in tab.get("delta", {}).items():
        cells = [arm, _fmt(r.get("test_disagreement", {})), _fmt(r.get("known_disagreement", {}))]
        cells += [_fmt(r.get(m, {}), pct=True) for m in qa_metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Knowledge detection (SFT model; AUROC of S_K for a wrong greedy closed-book answer):", "",
              "| QA set | wrong answers % | " + " | ".join(
                  sorted({k for d in tab["detection"].values() for k in d if k != "_wrong_rate"})) + " |"]
    scorers = sorted({k for d in tab["detection"].values() for k in d if k != "_wrong_rate"})
    lines.append("|" + "---|" * (2 + len(scorers)))
    for set_name, d in tab["detection"].items():
        lines.append(f"| {set_name} | {_fmt(d['_wrong_rate'], pct=True)} | "
                     + " | ".join(_fmt(d.get(s, {})) for s in scorers) + " |")
    return "\n".join(lines) + "\n"


def plots(tab: dict[str, Any], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tab["rows"]
    arms = list(rows)
    panels = [("test_disagreement", "held-out disagreement\nwith passage-grounded answer (lower better)", False),
              ("known_disagreement", "known-item disagreement (lower better)", False)]
    panels += [(m, f"{m.split(':', 1)[1].split('.')[0][:28]}\ncontains accuracy %", True)
               for m in tab["metrics"] if m.startswith("qa:") and m.endswith(".contains")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (metric, title, pct) in zip(axes[0], panels, strict=False):
        means = [(rows[a].get(metric) or {}).get("mean") for a in arms]
        sds = [(rows[a].get(metric) or {}).get("sd") or 0.0 for a in arms]
        scale = 100.0 if pct else 1.0
        xs = range(len(arms))
        ax.bar(xs, [scale * (m or 0.0) for m in means], yerr=[scale * s for s in sds], capsize=3,
               color=["#888888"] + ["#4477aa", "#66ccee", "#228833", "#ccbb44"][: len(arms) - 1])
        ax.set_xticks(list(xs), arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        lo = min(scale * (m or 0.0) for m in means)
        hi = max(scale * (m or 0.0) + scale * s for m, s in zip(means, sds, strict=True))
        if not pct:
            ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo + 1e-9) - 0.02), hi + 0.02)
    fig.suptitle("SmolLM2-135M-Instruct: arms (mean ± sd over training seeds)", fontsize=10)
    fig.tight_layout()
    arms_png = os.path.join(out_dir, "arms.png")
    fig.savefig(arms_png, dpi=110)
    plt.close(fig)
    return [arms_png]


def report(root: str, names: list[str], seeds: list[int]) -> str:
    out_dir = os.path.join(root, "results")
    os.makedirs(out_dir, exist_ok=True)
    collected = collect(root, names, seeds)
    tab = table(collected, names)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"table": tab, **collected}, f, indent=2, sort_keys=True)
    md = markdown(tab, collected)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    if collected["runs"]:
        plots(tab, out_dir)
    for arm in names:  # S_L/S_K histogram and one seed's ROC curves (the SFT model's detection)
        for rel, name in (("scores_hist.png", "scores_hist.png"),
                          (os.path.join("evaluation", "detection_roc.png"), "detection_roc.png")):
            src = os.path.join(root, arm, f"seed{seeds[0]}", rel)
            if os.path.exists(src) and not os.path.exists(os.path.join(out_dir, name)):
                shutil.copy(src, os.path.join(out_dir, name))
    print(md)
    return out_dir


def apply_sets(base: dict[str, Any], items: list[str]) -> None:
    """``--set a.b.c=YAML`` overrides, in place (missing sections are created)."""
    for item in items:
        key, _, raw = item.partition("=")
        node = base
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(HERE, "base.yaml"))
    parser.add_argument("--arms-file", default=os.path.join(HERE, "arms.yaml"))
    parser.add_argument("--arms", nargs="*", help="arm names (default: all of the arms file)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument("--root", default="runs/reproduction")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="override a base setting, e.g. --set source.options.train_per_category=5")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="start no new arm run after this many minutes (then run again)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    with open(args.config, encoding="utf-8") as f:
        base = yaml.safe_load(f)
    apply_sets(base, args.set)
    with open(args.arms_file, encoding="utf-8") as f:
        arms = yaml.safe_load(f)
    names = args.arms or list(arms)
    unknown = [n for n in names if n not in arms]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; the arms file defines {list(arms)}")
    deadline = None if args.deadline_minutes is None else time.time() + 60 * args.deadline_minutes
    done = True
    if not args.report_only:
        run_data(base, args.root)
        done = run_arms(base, arms, names, args.seeds, args.root, deadline)
    out = report(args.root, names, args.seeds)
    log(f"results in {out}" + ("" if done else " (partial)"))
    return 0 if done else 3


if __name__ == "__main__":
    sys.exit(main())
