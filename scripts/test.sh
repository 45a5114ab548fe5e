#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (CPU; GPU-only tests are skipped without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# -P: the tests import moopt as installed, never from the checkout's root.
exec .venv/bin/python -P -m pytest -q --durations=12 "$@"
