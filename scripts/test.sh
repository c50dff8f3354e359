#!/usr/bin/env bash
# Quick start 2: set everything up and run the whole test suite (lint and the import-layer
# contract run as tests too). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOWBIT_EXTRAS=dev bash scripts/setup.sh
# the report's browser test needs Debian's chromium: installed where this is root with apt (the
# test skips with a reason otherwise; .ci/run, LOWBIT_REQUIRE_SHARED=1, makes that a failure)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium for the report's browser test (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/dev/null 2>&1 || echo "could not install chromium; its test will skip"
fi
exec "${LOWBIT_VENV:-.venv}/bin/python" -m pytest "$@"
