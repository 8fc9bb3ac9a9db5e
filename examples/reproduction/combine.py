"""Merge the ``results.json`` of several reproduce.py runs into one table (docs/results.md).

    python examples/reproduction/combine.py OUT_DIR A/results.json B/results.json ...

The GPU machine of our workplace is lent for 30 minutes at a time, so the arms ran on three
machines; each results.json holds the runs of one. A run (arm/seed) present in several files is
taken from the first; ``--skip FILE:ARM/seedN`` leaves one out (our acceptance re-run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _driver() -> Any:
    spec = importlib.util.spec_from_file_location("reproduce", os.path.join(HERE, "reproduce.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--skip", action="append", default=[], metavar="FILE:ARM/seedN")
    parser.add_argument("--arms", nargs="*", default=["dpo-unfiltered", "dpo-tau0.5", "dpo-tau0.8", "dpo-random285"])
    args = parser.parse_args(argv)
    drv = _driver()
    runs: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
        data = data or loaded.get("data", {})
        for key, row in loaded["runs"].items():
            if f"{path}:{key}" in args.skip or key in runs:
                continue
            runs[key] = {**row, "source": os.path.splitext(os.path.basename(path))[0]}
    collected = {"runs": runs, "data": data}
    names = [a for a in args.arms if any(r["arm"] == a for r in runs.values())]
    tab = drv.table(collected, names)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"table": tab, **collected}, f, indent=2, sort_keys=True)
    md = drv.markdown(tab, collected)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    drv.plots(tab, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
