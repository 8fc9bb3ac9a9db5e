#!/bin/bash
# Export an earlier commit into bench_base/ (git-ignored) for a side-by-side GPU run against it:
#
#   bash benchmarks/baseline_tree.sh REV
#   device call, carry: [".assets/bench", "bench_base"]:
#     bash benchmarks/gpu_calls.sh paper-scale ... --out /tmp/new; \
#     BENCH_ASSETS=$PWD/.assets/bench bash bench_base/benchmarks/gpu_calls.sh paper-scale ... --out /tmp/old
#
# bench_base/benchmarks/gpu_calls.sh runs from bench_base/, so the baseline imports the old
# selflearn (its PYTHONPATH names the tree it runs from). Order matters: the first command on a
# machine pays the compilation caches (about 20 s for the 1.1B decoder, run 23), so warm them
# first or alternate the arms (new, old, new, old) and compare the later pair.
set -eu
[ $# -eq 1 ] || { echo "usage: bash benchmarks/baseline_tree.sh REV" >&2; exit 2; }
cd "$(dirname "$0")/.."
rev=$(git rev-parse --verify "$1^{commit}")
rm -rf bench_base
mkdir bench_base
git archive "$rev" | tar -x -C bench_base
echo "$rev" >bench_base/REVISION
echo "bench_base/ holds $rev ($(du -sh bench_base | cut -f1)); carry it with .assets/bench"
