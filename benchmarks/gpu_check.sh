#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): runs on the lent GPU machine as it is, with its own python3.
#
# A later session with a GPU runs it once through the device tool, from the repo root:
#   1. here, beforehand: bash scripts/fetch_gpu_wheels.sh   (pymoo, bitsandbytes, gguf -> benchmarks/wheels/, ~10 MiB)
#   2. run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels"], timeout_s=590)
#      Results come back under files_at: gpu_check.tar.gz (every step's CSV/PNG/log), summary.json.
#      Each step has its own limit, the whole check stops at --budget 550 s, and each step publishes to
#      $OUT when it ends, so a timeout keeps what finished. Unpack into benchmarks/results/gpu/ and commit.
# CPU dry run of the same steps (CI: tests/test_gpu_check.py): bash benchmarks/gpu_check.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ] && [[ " $* " == *" --dry-run "* ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -P benchmarks/gpu_check.py "$@"
