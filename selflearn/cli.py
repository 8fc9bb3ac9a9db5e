"""The ``selflearn`` command line: ``run``, ``plugins``, ``components``.

A user error (any :class:`SelflearnError`) exits with code 2 and one paragraph on stderr;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any

from .core.errors import SelflearnError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selflearn",
        description="Self-training of language models through knowledge detection.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a pipeline")
    run.add_argument("config", nargs="?", help="YAML config (default: the offline default run)")
    run.add_argument("--until", metavar="STAGE", help="stop after this stage")
    run.add_argument("--run-dir", metavar="DIR", help="run directory (path or fsspec URL)")
    run.add_argument("--rounds", type=int, metavar="N",
                     help="self-train in N rounds (docs/rounds.md); overrides rounds.count")
    run.add_argument("--dry-run", action="store_true", help="show the plan and estimated calls")
    run.add_argument("--wait-for-lock", type=float, default=0.0, metavar="SECONDS",
                     help="when another process is running on the run directory, wait up to "
                     "this long for it to finish instead of stopping at once")
    run.add_argument(
        "--rerun",
        metavar="STAGE",
        action="append",
        help="run this stage and every stage that depends on it again, even if nothing "
        "changed (repeatable); the per-call cache still saves unchanged model calls",
    )
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    plugins = sub.add_parser("plugins", help="list installed plugins")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    comps = sub.add_parser("components", help="list registered components")
    comps.add_argument("--json", action="store_true", help="machine-readable output")
    comps.add_argument("--kind", help="only this kind (e.g. inference_backend)")
    comps.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _host() -> Any:
    from .core.plugins import PluginHost

    return PluginHost()


def cmd_plugins(args: argparse.Namespace) -> int:
    host = _host()
    rows = [
        {
            "name": i.name,
            "distribution": i.distribution,
            "version": i.version,
            "hooks": list(i.hooks),
            "status": i.status,
            **({"error": i.error} if i.error else {}),
            **({"warnings": list(i.warnings)} if i.warnings else {}),
        }
        for i in host.infos
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']}  ({r['distribution']} {r['version']})  [{r['status']}]")
        if r["hooks"]:
            print(textwrap.fill(", ".join(r["hooks"]), 96, initial_indent="    hooks: ",
                                subsequent_indent=" " * 11))
        if r.get("error"):
            print(f"    error: {r['error']}")
        for warning in r.get("warnings", ()):
            print(textwrap.fill(warning, 96, initial_indent="    warning: ", subsequent_indent=" " * 13))
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    host = _host()
    rows = [
        {"kind": s.kind, "name": s.name, "provider": s.provider, "description": s.description,
         **({"replaces": s.replaces} if s.replaces else {})}
        for s in host.components()
        if not args.kind or s.kind == args.kind
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            print(f"{kind}:")
        replaced = f", replaces {r['replaces']}" if r.get("replaces") else ""
        print(f"  {r['name']:<{width}}  {r['description']}  [{r['provider']}{replaced}]")
    return 0


def _component(slot: str, entry: Any) -> str:
    if entry is None:
        return f"{slot}: none"
    if "object" in entry:
        return f"{slot}: {entry['object']} (a Python object)"
    text = f"{slot}: {entry['use']}"
    if entry.get("model"):
        text += f" (model {entry['model']})"
    if entry.get("options"):
        text += " " + json.dumps(entry["options"], sort_keys=True, default=str)
    return text


def _calls(calls: dict[str, Any]) -> str:
    total = calls.get("total", 0)
    if "cached" not in calls:
        return f"generation calls: {total} (the cache is checked once the inputs exist)"
    text = f"generation calls: {total}, {calls['cached']} in the cache, {calls['to_make']} to make"
    if calls.get("to_make_max", calls["to_make"]) != calls["to_make"]:
        text += f" (up to {calls['to_make_max']} with self-label retries)"
    return text


def _print_plan(run_dir: str, plan: list[dict[str, Any]]) -> None:
    """The dry-run: per stage its status, components, counts, calls and cost."""
    from .core.plan import totals

    print(f"run directory: {run_dir}")
    for row in plan:
        print(f"  {row['stage']:<12} {row['status']}")
        for slot, entry in row["components"].items():
            print(f"      {_component(slot, entry)}")
        if row["estimate"]:
            mark = " (estimated from the configuration)" if row["estimated"] else ""
            mark = " (exact: rehearsed in memory, no model call)" if row.get("rehearsed") else mark
            est = ", ".join(f"{k}: {v}" for k, v in row["estimate"].items())
            print(textwrap.fill(f"counts{mark}: {est}", 96, initial_indent=" " * 6, subsequent_indent=" " * 8))
        if row["calls"]:
            print(f"      {_calls(row['calls'])}")
        if row["cost_usd"] is not None:
            print(f"      cost: at most ${row['cost_usd']:.4f}")
    t = totals(plan)
    line = f"generation calls to make: {t['to_make']} ({t['cached']} of {t['total']} in the cache"
    line += "; the cache is checked only where the inputs exist)" if t["estimated"] else ")"
    if t["to_make_max"] != t["to_make"]:
        line += f", up to {t['to_make_max']} with retries"
    print(line)
    if t["cost_usd"] is not None:
        print(f"cost of priced components: at most ${t['cost_usd']:.4f}")


def cmd_run(args: argparse.Namespace) -> int:
    from .core.config import default_config, load_yaml
    from .core.pipeline import Pipeline

    config = load_yaml(args.config) if args.config else default_config()
    if args.run_dir:
        config["run_dir"] = args.run_dir
    if args.rounds is not None:
        section = config.get("rounds")
        config["rounds"] = {**section, "count": args.rounds} if isinstance(section, dict) else args.rounds
    pipeline = Pipeline(config)
    if args.dry_run:
        _print_plan(pipeline.run_dir, pipeline.plan(args.until, rerun=args.rerun))
        return 0
    outcomes = pipeline.run(args.until, rerun=args.rerun, lock_wait=args.wait_for_lock)
    print(f"run directory: {pipeline.run_dir}")
    for o in outcomes:
        brief = ", ".join(
            f"{k}={v}" for k, v in o.summary.items() if isinstance(v, (int, float, str))
        )
        print(f"  {o.name:<12} {o.status:<8} {o.seconds:7.1f}s  {brief}")
        for note in o.summary.get("notes") or []:
            print(textwrap.fill(f"note: {note}", 100, initial_indent=" " * 6, subsequent_indent=" " * 12))
    if outcomes and outcomes[-1].status == "stopped":
        print()
        print(textwrap.fill(f"stopped: {outcomes[-1].summary['stopped']}", 100, break_long_words=False))
    # (a process that followed the main one of a launch leaves the report to it)
    if (outcomes and outcomes[-1].name in ("evaluate", "rounds") and outcomes[-1].status != "followed"
            and pipeline.store.exists("report.md")):
        print()
        print(pipeline.store.read_text("report.md"))
        print(f"(report: {pipeline.store.path('report.md')})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # deprecation chatter from the ML libraries buries the progress bars; --debug keeps it
    if not args.debug:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    handlers = {"run": cmd_run, "plugins": cmd_plugins, "components": cmd_components}
    try:
        return handlers[args.command](args)
    except SelflearnError as exc:
        if args.debug:
            traceback.print_exc()
        msg = textwrap.fill(f"error: {exc}", 100, break_long_words=False, break_on_hyphens=False)
        print(msg, file=sys.stderr)
        if not args.debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
