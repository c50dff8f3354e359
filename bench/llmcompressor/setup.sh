#!/usr/bin/env bash
# Create bench/.venv-llmc: a separate venv with llm-compressor 0.14 for the GPTQ
# comparison (its transformers<=5.17 / datasets pins clash with lowbit's main venv).
# Usage: bash bench/llmcompressor/setup.sh   (idempotent: exits early if the venv works)
# Then:  bench/.venv-llmc/bin/python bench/llmcompressor/run_gptq.py --help
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$BENCH_DIR/.venv-llmc"
PY="$VENV/bin/python"
PYTHON="${PYTHON:-python3}"

# torch==2.13.0 resolves to the local CPU wheel (2.13.0+cpu); the rest is what pip
# resolved for llmcompressor 0.14.0 (each is the highest version it allows), pinned here
# so reruns get the same stack.
PINS=(
  "torch==2.13.0"
  "llmcompressor==0.14.0"
  "compressed-tensors==0.19.0"
  "transformers==5.17.0"
  "datasets==5.0.1"
  "accelerate==1.15.0"
  "auto-round==0.15.1"
)

check() {
  "$PY" - >/dev/null 2>&1 <<'PY'
import importlib.metadata as md
assert md.version("llmcompressor") == "0.14.0"
assert md.version("torch").startswith("2.13.0")
from llmcompressor import oneshot  # noqa: F401
from llmcompressor.modifiers.quantization import GPTQModifier  # noqa: F401
PY
}

# pip here warns once per package about missing local index folders; hide only that.
pip_install() {
  "$PY" -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if [[ -x "$PY" ]] && check; then
  echo "llm-compressor venv OK: $VENV"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
pip_install --upgrade pip
pip_install "${PINS[0]}"  # torch first, so the resolver never reaches for a CUDA build
pip_install "${PINS[@]}"
check || { echo "llm-compressor venv check failed: $VENV" >&2; exit 1; }
echo "llm-compressor venv ready: $VENV"
