#!/usr/bin/env bash
# Quick start 1: set everything up and run lowbit's main job on its built-in model.
# Extra arguments go to `lowbit run` (e.g. --eval-text FILE --calib-text FILE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${LOWBIT_VENV:-.venv}/bin/lowbit" run --overwrite "$@"
