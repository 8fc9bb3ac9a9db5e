#!/bin/bash
# The benchmark calls on the GPU machine (device tool), with the folder that
# benchmarks/prepare_bench_assets.py writes carried: `carry: [".assets/bench"]`, timeout_s 600.
#
#   bash benchmarks/gpu_calls.sh ray-overhead ARM [QUESTIONS [ray_overhead.py args]]
#   bash benchmarks/gpu_calls.sh paper-scale [paper_scale.py args]
#   bash benchmarks/gpu_calls.sh smoke [gpu_smoke.py args]
#   bash benchmarks/gpu_calls.sh gen [run_gpu.py args]
#   bash benchmarks/gpu_calls.sh profile [profile_step.py args]
#
# The first call on a machine installs whl/ into /tmp/site and unpacks ray.tar.xz there; later
# calls on the same warm machine skip that (and reuse /tmp/m135 and the paper-scale run folder,
# so a second call resumes). Every run is under `timeout`, so that a 10-minute call still
# returns what it has; results are copied to $OUT (at most 8 files come back).
# Overrides, for trying it on the CPU: BENCH_ASSETS (.assets/bench), BENCH_SITE (/tmp/site),
# BENCH_WORK (/tmp), PYTHON (python3), GPU_CALLS_BUDGET_S (585: seconds for the whole command).
set -u
usage() {
  echo "usage: bash benchmarks/gpu_calls.sh {ray-overhead ARM [QUESTIONS] | paper-scale | smoke | gen | profile} [ARGS...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
CMD=$1
shift
case "$CMD" in
  ray-overhead) [ $# -ge 1 ] || usage ;;
  paper-scale | smoke | gen | profile) ;;
  *) usage ;;
esac
cd "$(dirname "$0")/.." || exit 1
A=${BENCH_ASSETS:-$PWD/.assets/bench}
SITE=${BENCH_SITE:-/tmp/site}
WORK=${BENCH_WORK:-/tmp}
PY=${PYTHON:-python3}
BUDGET=${GPU_CALLS_BUDGET_S:-585}
OUT=${OUT:-$PWD/gpu-calls-out}
mkdir -p "$OUT" "$SITE" "$WORK"
if [ ! -f "$A/manifest.json" ]; then
  echo "no $A/manifest.json: run benchmarks/prepare_bench_assets.py WHEELS_DIR here first, and carry .assets/bench" >&2
  exit 2
fi

# Install the carried wheels and Ray once per machine (the marker names the assets it came from).
setup() {
  local want
  want=$(sha256sum "$A/manifest.json" | cut -c1-16)
  [ "$(cat "$SITE/.gpu_calls_ready" 2>/dev/null)" = "$want" ] && return 0
  if [ -d "$A/whl" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$A"/whl/*.whl || exit 1
  else
    echo "no whl/ in $A (prepared with --no-wheels): using the installed packages"
  fi
  if [ -f "$A/ray.tar.xz" ]; then tar xJf "$A/ray.tar.xz" -C "$SITE" || exit 1; fi
  echo "$want" >"$SITE/.gpu_calls_ready"
}
setup
export PYTHONPATH=$SITE:$A/pkgs:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
# TOKENIZERS_PARALLELISM stays unset: the NLI scores tokenise on the tokenizers' thread pool (run 21)
export SELFLEARN_NO_PROGRESS=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "no nvidia-smi: no GPU here"
fi
"$PY" - <<'EOF' || exit 1
import importlib.metadata as md
import sys
import torch
found = {}
for name in ("torch", "transformers", "triton", "ray", "cattrs"):
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        found[name] = "missing"
print("python", sys.version.split()[0], " ".join(f"{k} {v}" for k, v in found.items()),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
EOF

# Run a Python command under what is left of the budget (25 s kept for copying), the full log in
# $OUT/$CMD.log, the console without the weight-loading chatter; its exit status is returned.
run() {
  local left=$((BUDGET - SECONDS - 25))
  [ "$left" -gt 10 ] || { echo "no time left for: $*"; return 124; }
  echo "+ timeout $left $*"
  timeout -k 10 "$left" "$@" 2>&1 | tee -a "$OUT/$CMD.log" | grep -v -i "loading weights\|token authentication"
  local status=${PIPESTATUS[0]}
  echo "exit $status"
  return "$status"
}

status=0
case "$CMD" in
  ray-overhead)
    ARM=$1
    QUESTIONS=${2:-5780}
    shift $(($# < 2 ? $# : 2))
    if [ ! -f "$WORK/m135/config.json" ]; then
      run "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import run_gpu; run_gpu.build_lm(run_gpu.SMOLLM2_135M, '$A/perf/smollm2_tok', '$WORK/m135', 'cuda')" || exit 1
    fi
    sha256sum "$WORK/m135/model.safetensors" | cut -c1-16
    run "$PY" benchmarks/ray_overhead.py --gpu --fresh --arms "$ARM" --model "$WORK/m135" --questions "$QUESTIONS" --k 10 \
      --max-new-tokens 384 --batch-size 2560 --chunk-size 256 --out "$WORK/rayps" "$@" || status=$?
    cp -r "$WORK/rayps/ray.json" "$WORK/rayps/results" "$OUT/" 2>/dev/null
    ;;
  paper-scale)
    run "$PY" benchmarks/paper_scale.py --out "$WORK/ps" --batch-size 2560 --chunk-size 256 --assets "$A/perf" \
      --nli-assets "$A/bench_nli" "$@" || status=$?
    cp "$WORK/ps/paper_scale.json" "$WORK/ps/run/manifest.json" "$OUT/" 2>/dev/null
    ;;
  smoke)
    run "$PY" benchmarks/gpu_smoke.py --out "$OUT/smoke" --assets "$A/perf" --nli-assets "$A/bench_nli" "$@" || status=$?
    ;;
  gen)
    run "$PY" benchmarks/run_gpu.py --sections gen --out "$OUT/gen" --assets "$A/perf" --nli-assets "$A/bench_nli" \
      --deadline-s $((BUDGET - SECONDS - 120)) "$@" || status=$?
    ;;
  profile)
    run "$PY" benchmarks/profile_step.py --out "$OUT/prof" --parts decode --assets "$A/perf" --nli-assets "$A/bench_nli" \
      "$@" || status=$?
    ;;
esac
ls -R "$OUT" | head -20
exit "$status"
