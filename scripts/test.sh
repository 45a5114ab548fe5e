#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (CPU; GPU-only tests are skipped without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# -P: the repo root stays off sys.path, so its kernels/ folder cannot pose as Hugging Face's `kernels`.
exec .venv/bin/python -P -m pytest -q --durations=12 "$@"
