#!/usr/bin/env bash
# Sets up .venv and runs the whole test suite (CPU; GPU-only tests are skipped without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# -P: the tests import moopt as installed, never from the checkout's root.
# One pytest worker per core (at most 4), each taking whole test files and keeping to its own cores
# (tests/conftest.py). MOOPT_TEST_WORKERS=1 runs everything in one process.
WORKERS="${MOOPT_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
args=()
[ "$WORKERS" -gt 1 ] && args=(-n "$WORKERS" --dist loadfile)
exec .venv/bin/python -P -m pytest -q --durations=12 "${args[@]}" "$@"
