"""Block-level checkpoints of a quantization, so that a crashed run resumes where it stopped.

``lowbit quantize -o OUT`` builds its directory as ``OUT.partial/``: each decoder block's
packed layers go to their shard (``blocks-NNNNN.safetensors``) as soon as the block is done,
then ``checkpoint.json`` is rewritten atomically with the block's record: the shard's sha256,
each layer's layout and report, AWQ / SmoothQuant's choices and the tensors they changed
outside the quantized linears (``.checkpoint/smoothed-NNNNN.safetensors``, with their sha256).
The manifest also holds the run's *key* (model fingerprint, plan, calibration, propagation,
chunking, runtime dtype and device) and its sha256.

A resumed run (:meth:`Checkpoint.start` with ``resume``) refuses another key, keeps the
longest prefix of blocks whose files still match their sha256 (the rest is redone), and
replays the kept blocks from their stored codes (see :mod:`lowbit.models.quantize`). When the
directory is complete its checkpoint files are removed and it is renamed to ``OUT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit._io import check_new_output, file_sha256, is_disk_full, publish_dir, write_json
from lowbit.errors import (
    ArtefactError,
    ConfigError,
    LowbitError,
    OutputExistsError,
    OutputPathError,
)

MANIFEST = "checkpoint.json"
SIDE = ".checkpoint"
VERSION = 1


def partial_path(out: Path) -> Path:
    """Where the directory ``out`` is built until it is complete."""
    return Path(f"{out}.partial")


def check_partial(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, an interrupted run's directory that would be lost or reused
    silently (``--resume`` continues it, ``--overwrite`` starts again)."""
    part = partial_path(out)
    if part.exists() and not resume and not overwrite:
        raise OutputExistsError(
            f"{part} holds an interrupted quantization of {out}; pass --resume to continue it "
            "(with the same options) or --overwrite to start again"
        )


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class BlockRecord:
    """What a finished block left: its shard (None: no quantized layer), the layers' layouts
    and reports, AWQ's pair records, the smoothed tensors' file and the expert routing."""

    shard: str | None
    sha256: str | None
    layouts: dict[str, dict[str, Any]]
    reports: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    smoothed: str | None = None
    smoothed_sha256: str | None = None
    experts: dict[str, Any] | None = None


class Checkpoint:
    """The checkpoint of one run in ``directory`` (see the module docstring)."""

    def __init__(self, directory: Path, key: dict[str, Any], blocks: dict[int, BlockRecord]):
        self.directory, self.key, self.blocks = Path(directory), key, blocks
        self.discarded: list[int] = []

    @classmethod
    def start(cls, directory: Path, key: dict[str, Any], *, resume: bool) -> Checkpoint:
        """A fresh checkpoint, or with ``resume`` the one in ``directory`` (checked)."""
        file = Path(directory) / MANIFEST
        if not (resume and file.is_file()):
            fresh = cls(directory, key, {})
            fresh._write()
            return fresh
        try:
            data = json.loads(file.read_text())
            stored = {int(i): BlockRecord(**b) for i, b in data["blocks"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtefactError(
                f"{file} is damaged ({exc}); pass --overwrite to start again"
            ) from exc
        if data.get("version") != VERSION or data.get("key_hash") != key_hash(key):
            old = data.get("key") or {}
            differ = sorted(k for k in set(key) | set(old) if _canon(key.get(k)) != old.get(k))
            raise ConfigError(
                f"{directory} was made with other options ({', '.join(differ) or 'version'} "
                "differ); resume with the same options, or pass --overwrite to start again"
            )
        ckpt = cls(directory, key, {})
        ckpt._verify(stored)
        return ckpt

    def _verify(self, stored: dict[int, BlockRecord]) -> None:
        """Keep the longest prefix of blocks whose files match their sha256."""
        i = 0
        while i in stored and self._intact(stored[i]):
            self.blocks[i] = stored[i]
            i += 1
        self.discarded = sorted(j for j in stored if j >= i)
        if self.discarded:
            self._write()

    def _intact(self, rec: BlockRecord) -> bool:
        files = [(rec.shard, rec.sha256), (rec.smoothed, rec.smoothed_sha256)]
        return all(
            name is None or ((self.directory / name).is_file()
                             and file_sha256(self.directory / name) == digest)
            for name, digest in files
        )  # fmt: skip

    @property
    def done(self) -> int:
        """How many leading blocks are complete."""
        return len(self.blocks)

    def record(self, i: int, shard: Path | None, rec: BlockRecord, smoothed: dict) -> None:
        """Block ``i`` is complete: its shard (already written) and ``rec``; ``smoothed``
        (parameter name → tensor) is written beside them. The manifest is rewritten last."""
        from safetensors.torch import save_file

        side = None
        if smoothed:
            (self.directory / SIDE).mkdir(exist_ok=True)
            side = f"{SIDE}/smoothed-{i:05d}.safetensors"
            tensors = {k: v.detach().cpu().contiguous() for k, v in smoothed.items()}
            save_file(tensors, str(self.directory / side), metadata={"format": "pt"})
        fields = {"shard": None, "sha256": None, "smoothed": side, "smoothed_sha256": None}
        if shard is not None:
            fields.update(shard=shard.name, sha256=_synced_sha256(shard))
        if side is not None:
            fields["smoothed_sha256"] = _synced_sha256(self.directory / side)
        self.blocks[i] = BlockRecord(**{**asdict(rec), **fields})
        self._write()

    def smoothed(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        name = self.blocks[i].smoothed
        return {} if name is None else load_file(str(self.directory / name))

    def _write(self) -> None:
        data = {
            "version": VERSION,
            "key_hash": key_hash(self.key),
            "key": _canon(self.key),
            "blocks": {str(i): asdict(b) for i, b in sorted(self.blocks.items())},
        }
        write_json(self.directory / MANIFEST, data, overwrite=True)


def _canon(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _synced_sha256(path: Path) -> str:
    """The sha256 of ``path`` once its bytes are on disk (recorded only after an fsync)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return file_sha256(path)


@contextlib.contextmanager
def resumable_dir(out: Path, *, overwrite: bool, resume: bool) -> Iterator[Path]:
    """``OUT.partial``, kept after an interruption once a block is done (and after any
    error of a resumed run), removed after a lowbit error of a fresh run; renamed to ``out``
    without its checkpoint files when the block closes without an error."""
    out = Path(out)
    part = partial_path(out)
    check_new_output(out, overwrite=overwrite)
    check_partial(out, overwrite=overwrite, resume=resume)
    if part.exists() and not resume:
        shutil.rmtree(part)
    fresh = not part.exists()
    part.mkdir(parents=True, exist_ok=True)
    try:
        yield part
    except BaseException as exc:
        full = is_disk_full(exc)
        if fresh and (full or isinstance(exc, LowbitError) or not blocks_done(part)):
            shutil.rmtree(part, ignore_errors=True)
        if full:
            raise OutputPathError(_disk_full(out, part, kept=part.exists())) from exc
        raise
    (part / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(part / SIDE, ignore_errors=True)
    for stray in part.glob(".*.partial"):  # a temporary file a killed run left half-written
        stray.unlink()
    publish_dir(part, out)


def _disk_full(out: Path, part: Path, *, kept: bool) -> str:
    where = (
        f"the finished blocks are kept in {part}: free space, then run the same command with "
        "--resume"
        if kept
        else "the partial directory was removed, so nothing that looks complete is left; free "
        "space or choose another output path"
    )
    return f"no space left on the device of {out} while writing this directory: {where}"


def blocks_done(part: Path) -> int:
    """How many blocks the checkpoint in ``part`` records (0 when there is none)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return len(json.loads((part / MANIFEST).read_text())["blocks"])
    return 0
