#!/usr/bin/env bash
# Builds a virtual environment beside the project's, with peer libraries from PyPI and sae_nb itself (editable, no
# dependencies), for the scripts that run sae_nb side by side with them. Idempotent: a second run with the same
# requirements only checks a stamp; changed requirements install what is new into the existing environment.
#   bash .ci/peer_venv.sh VENV "REQUIREMENTS" ["REQUIREMENTS WITHOUT THEIR DEPENDENCIES"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=$1; WANT=$2; NODEPS=${3:-}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
STAMP="want: $WANT | no deps: $NODEPS"
[ -f "$VENV/.stamp" ] && [ "$(cat "$VENV/.stamp")" = "$STAMP" ] && { echo "setup: $VENV is ready"; exit 0; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install "torch==2.13.0"                        # first, pinned: the CPU build, not a multi-GB CUDA one
pip install $WANT "fastcore>=1.5.29,<2" "torch==2.13.0"
pip uninstall -y torchvision 2>/dev/null || true   # a CUDA torchvision breaks transformers' import
pip install -e . --no-deps
[ -z "$NODEPS" ] || pip install --no-deps $NODEPS
echo "$STAMP" > "$VENV/.stamp"
echo "setup: built $VENV"
