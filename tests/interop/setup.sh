#!/usr/bin/env bash
# Builds .interop-venv/: SAELens and EleutherAI sparsify beside sae_nb, for tests/interop/make_fixtures.py and the
# slow suite's live round trips. Idempotent: a second run only checks a stamp.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.interop-venv
[ -f "$VENV/.stamp" ] && { echo "interop setup: $VENV is ready"; exit 0; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"                        # first, pinned: the CPU build, not a multi-GB CUDA one
pip install "sae-lens>=6,<7" "eai-sparsify>=1.3,<2"
pip uninstall -y torchvision 2>/dev/null || true   # a CUDA torchvision breaks transformers' import
pip install -e . --no-deps
pip install "fastcore>=1.5.29,<2"
touch "$VENV/.stamp"
echo "interop setup: built $VENV"
