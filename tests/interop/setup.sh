#!/usr/bin/env bash
# Builds .interop-venv/: SAELens and EleutherAI sparsify beside sae_nb, for tests/interop/make_fixtures.py and the
# slow suite's live round trips.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../../.ci/peer_venv.sh" .interop-venv "sae-lens>=6,<7 eai-sparsify>=1.3,<2"
