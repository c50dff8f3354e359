#!/usr/bin/env bash
# Quick start 2: set everything up and run the whole test suite (lint and the import-layer
# contract run as tests too). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOWBIT_EXTRAS=dev bash scripts/setup.sh
exec "${LOWBIT_VENV:-.venv}/bin/python" -m pytest "$@"
