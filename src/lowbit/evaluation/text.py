"""Text sources and token windows.

A source is a local file, a Hugging Face dataset given by name (``NAME:CONFIG:SPLIT``, read with
``datasets``), or a built-in text that ships with Python: ``builtin:python-docs``, whose
evaluation and calibration parts come from two different sources
(see :mod:`lowbit.evaluation.builtin_text`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import DataError


@dataclass(frozen=True)
class FileText:
    path: Path

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class HubText:
    dataset: str
    config: str | None
    split: str
    column: str = "text"

    def describe(self) -> str:
        return ":".join(p for p in (self.dataset, self.config, self.split) if p)


@dataclass(frozen=True)
class BuiltinText:
    name: str
    part: str  # "eval" or "calib"

    def describe(self) -> str:
        return f"builtin:{self.name}:{self.part}"


TextSource = FileText | HubText | BuiltinText
BUILTIN_TEXTS = ("python-docs",)


def parse_text_source(spec: str, *, part: str = "eval") -> TextSource:
    """A path, ``builtin:NAME`` (``part`` picks its evaluation or calibration half), or a hub
    dataset ``NAME:CONFIG:SPLIT`` / ``NAME:SPLIT``."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN_TEXTS:
            raise DataError(f"unknown built-in text {name!r}; known: {', '.join(BUILTIN_TEXTS)}")
        return BuiltinText(name, part)
    path = Path(spec).expanduser()
    if path.exists():
        return FileText(path)
    parts = spec.split(":")
    if len(parts) in (2, 3) and all(parts):
        return HubText(parts[0], parts[1] if len(parts) == 3 else None, parts[-1])
    raise DataError(
        f"text source {spec!r} is neither an existing file, nor builtin:NAME "
        f"({', '.join(BUILTIN_TEXTS)}), nor a hub dataset NAME:CONFIG:SPLIT"
    )


def load_text(source: TextSource) -> str:
    if isinstance(source, FileText):
        if not source.path.is_file():
            raise DataError(f"text file {source.path} does not exist")
        try:
            return source.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"text file {source.path} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                "convert it, e.g. with iconv -t UTF-8"
            ) from exc
    if isinstance(source, BuiltinText):
        from lowbit.evaluation.builtin_text import python_docs

        return python_docs(source.part)
    return _hub_text(source)


def _hub_text(source: HubText) -> str:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"reading {source.describe()} needs the `datasets` package: pip install 'lowbit[hub]'"
        ) from exc
    try:
        ds = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except Exception as exc:  # the hub client raises many kinds (network, missing split, ...)
        raise DataError(f"cannot load dataset {source.describe()}: {exc}") from exc
    if source.column not in ds.column_names:
        raise DataError(f"dataset {source.describe()} has no column {source.column!r}")
    return "\n\n".join(ds[source.column])


def text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids (n,) of the whole text, tokenized once, without special tokens (no BOS)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(ids: torch.Tensor, ctx: int, max_windows: int | None, what: str) -> torch.Tensor:
    """Consecutive non-overlapping windows (n, ctx) from the start of ``ids``."""
    _check_ctx(ids, ctx, what)
    n = ids.numel() // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * ctx].view(n, ctx).clone()


def calibration_windows(ids: torch.Tensor, ctx: int, n: int, seed: int, what: str) -> torch.Tensor:
    """``n`` windows (n, ctx) at seeded random offsets (the usual GPTQ calibration draw)."""
    _check_ctx(ids, ctx, what)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - ctx + 1, (n,), generator=gen)
    return torch.stack([ids[s : s + ctx] for s in starts.tolist()])


def _check_ctx(ids: torch.Tensor, ctx: int, what: str) -> None:
    if ctx < 2:
        raise DataError(f"window length (ctx) must be at least 2, got {ctx}")
    if ids.numel() < ctx:
        raise DataError(
            f"{what} has {ids.numel()} tokens, shorter than one window of {ctx}; "
            "use a longer text or a smaller --ctx"
        )


def data_dir() -> Path:
    """Where the shared evaluation data lives: $LOWBIT_DATA_DIR, else ../shared/data."""
    env = os.environ.get("LOWBIT_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").is_file() and candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"
