"""Project-wide contracts: the import layers of DESIGN.md, lint, and a light CLI import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: install lowbit with the dev extra")
    return path


def test_import_layers_hold():
    """import-linter: imports flow downward only; evaluation never imports algorithms."""
    run = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_is_clean():
    run = subprocess.run(
        [_tool("ruff"), "check", "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_cli_help_imports_nothing_heavy():
    code = (
        "import sys, lowbit.cli.main as m\n"
        "heavy = [n for n in ('torch', 'transformers', 'numpy', 'safetensors') "
        "if n in sys.modules]\n"
        "print(','.join(heavy))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == ""
    helped = subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "quantize" in helped.stdout
