"""Text sources and token windows.

A source is a local file, a Hugging Face dataset given by name (``NAME:CONFIG:SPLIT``, read with
``datasets``), or a built-in text that ships with Python: ``builtin:python-docs``, whose
evaluation and calibration parts come from two different sources
(see :mod:`lowbit.evaluation.builtin_text`).

Windows: the text is tokenized once, without special tokens, and windows of ``ctx`` tokens are
cut from it. Without BOS a window is ``ctx`` text tokens. With BOS (``bos``, the token id of a
resolved :class:`~lowbit.evaluation.bos.BosChoice`) a window is ``[BOS] + ctx-1 text tokens``:
the BOS token is prepended, not written over a text token (llama.cpp overwrites the first
token of each chunk instead). The metrics predict positions 1..ctx-1 of a window from the
tokens before them (:mod:`lowbit.evaluation.metrics`), so the BOS position is never a target:
with BOS every text token of a window is scored, the first one predicted from BOS alone;
without BOS the window's first text token is context only. Either way a window scores
``ctx - 1`` tokens. Consecutive evaluation windows with BOS advance by ``ctx - 1`` text tokens,
so no text token is skipped or scored twice.
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
        raw = source.path.read_bytes()
        if not raw.strip():
            raise DataError(f"text file {source.path} is empty; give a text of a few pages")
        if b"\x00" in raw[:65536]:
            raise DataError(
                f"text file {source.path} looks binary (it holds NUL bytes), not a text; "
                "give a UTF-8 text file"
            )
        try:
            return raw.decode("utf-8")
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
    """Token ids (n,) of the whole text, tokenized once, without special tokens (a BOS token
    is prepended to each window when they are cut, see the module's docstring)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(
    ids: torch.Tensor, ctx: int, max_windows: int | None, what: str, bos: int | None = None
) -> torch.Tensor:
    """Consecutive non-overlapping windows (n, ctx) from the start of ``ids``; with ``bos``
    (a token id), each is ``[bos]`` and the next ``ctx - 1`` text tokens."""
    span = _span(ids, ctx, what, bos)
    n = ids.numel() // span
    if max_windows is not None:
        n = min(n, max_windows)
    return _with_bos(ids[: n * span].view(n, span), bos)


def calibration_windows(
    ids: torch.Tensor, ctx: int, n: int, seed: int, what: str, bos: int | None = None
) -> torch.Tensor:
    """``n`` windows (n, ctx) at seeded random offsets (the usual GPTQ calibration draw); with
    ``bos`` (a token id), each is ``[bos]`` and ``ctx - 1`` text tokens from its offset."""
    span = _span(ids, ctx, what, bos)
    starts = calibration_starts(ids, span, n, seed)
    return _with_bos(torch.stack([ids[s : s + span] for s in starts]), bos)


def calibration_starts(ids: torch.Tensor, span: int, n: int, seed: int) -> list[int]:
    """The text offsets of :func:`calibration_windows`' ``n`` windows of ``span`` text tokens."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, ids.numel() - span + 1, (n,), generator=gen).tolist()


HELD_OUT_SALT = 0x6C6F77  # the held-out draw's generator: seed + this, apart from the calibration's
HELD_OUT_TRIES = 1000  # rejected offsets in a row before drawing among the free ones instead


def held_out_windows(
    ids: torch.Tensor, ctx: int, n: int, seed: int, calib_n: int, what: str, bos: int | None = None
) -> torch.Tensor:
    """``n`` windows (n, ctx) of the same text as :func:`calibration_windows` (``calib_n``
    windows, ``seed``) whose text overlaps none of those calibration windows' text nor each
    other's: text the calibration never saw, for scoring what was fitted on it. Each offset is
    drawn uniformly over the text and kept when free (after :data:`HELD_OUT_TRIES` rejections
    in a row, drawn among the free ones); deterministic in (text, ctx, n, seed, calib_n), its
    first k windows those of a k-window draw; the calibration draw is unchanged."""
    span = _span(ids, ctx, what, bos)
    free = torch.ones(ids.numel() - span + 1, dtype=torch.bool)  # offsets still allowed
    for t in calibration_starts(ids, span, calib_n, seed):
        block_offsets(free, t, span)
    gen = torch.Generator().manual_seed(seed + HELD_OUT_SALT)
    chosen: list[int] = []
    while len(chosen) < n:
        s = _draw_free(free, gen)
        if s is None:
            raise DataError(
                f"{what}: found {len(chosen)} of {n} held-out windows of {ctx} tokens outside "
                f"the {calib_n} calibration windows (the text has no room for more); use a "
                "longer text, fewer calibration or held-out windows, or a smaller --ctx"
            )
        chosen.append(s)
        block_offsets(free, s, span)
    return _with_bos(torch.stack([ids[s : s + span] for s in chosen]), bos)


def block_offsets(free: torch.Tensor, s: int, span: int) -> None:
    """Mark in ``free`` (one flag per window offset) every offset whose ``span`` tokens would
    overlap the window [s, s + span): s − span + 1 … s + span − 1."""
    free[max(s - span + 1, 0) : s + span] = False


def _draw_free(free: torch.Tensor, gen: torch.Generator) -> int | None:
    """A free offset: drawn uniformly and kept when free, or after HELD_OUT_TRIES rejections
    drawn among the free ones; None when none is free."""
    for _ in range(HELD_OUT_TRIES):
        s = int(torch.randint(0, free.numel(), (1,), generator=gen))
        if free[s]:
            return s
    left = free.nonzero().squeeze(1)
    if left.numel() == 0:
        return None
    return int(left[int(torch.randint(0, left.numel(), (1,), generator=gen))])


def _with_bos(text: torch.Tensor, bos: int | None) -> torch.Tensor:
    """``text`` (n, span) with a first column of ``bos`` prepended (a fresh tensor either way)."""
    if bos is None:
        return text.clone()
    return torch.cat([torch.full((text.shape[0], 1), bos, dtype=text.dtype), text], dim=1)


def _span(ids: torch.Tensor, ctx: int, what: str, bos: int | None) -> int:
    """Text tokens per window: ``ctx``, or ``ctx - 1`` beside a BOS token; checked."""
    if ctx < 2:
        raise DataError(f"window length (ctx) must be at least 2, got {ctx}")
    span = ctx - (bos is not None)
    if ids.numel() < span:
        extra = f" (BOS and {span} text tokens)" if bos is not None else ""
        raise DataError(
            f"{what} has {ids.numel()} tokens, shorter than one window of {ctx}{extra}; "
            "use a longer text or a smaller --ctx"
        )
    return span


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
