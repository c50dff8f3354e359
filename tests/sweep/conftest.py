"""Fixtures of the sweep tests: a sweep file of tiny RTN trials on the tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def write_sweep(path: Path, model: Path, formats: list[str], groups: list[int]) -> Path:
    data = {
        "models": [str(model)],
        "formats": formats,
        "group_sizes": groups,
        "texts": [{"source": "builtin:python-docs", "ctx": 32, "windows": 4}],
        "runtime": {"device": "cpu", "dtype": "float32"},
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def sweep_file(tmp_path: Path, tiny_llama: Path) -> Path:
    """Four RTN trials (int4 and int3, groups of 16 and 32)."""
    return write_sweep(tmp_path / "study.yaml", tiny_llama, ["int4", "int3"], [16, 32])
