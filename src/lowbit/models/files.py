"""Reading and checking weight files without loading them: safetensors headers, truncation,
fingerprints."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

from lowbit.errors import ModelSourceError

_FINGERPRINT_SAMPLE = 1 << 20


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file; raises if the file is truncated or malformed."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ModelSourceError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise ModelSourceError(
                f"{path} is truncated or not a safetensors file (bad header size)"
            )
        try:
            header = json.loads(handle.read(n))
        except ValueError as exc:
            raise ModelSourceError(f"{path} has a corrupt safetensors header: {exc}") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelSourceError(
            f"{path} is truncated: its header declares {8 + n + end:,} bytes but the file holds "
            f"{size:,}; download or convert it again"
        )
    return header


def fingerprint_files(paths: list[Path]) -> str:
    """A content fingerprint: names, sizes, headers and the first and last MiB of each file."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(_FINGERPRINT_SAMPLE))
            if size > 2 * _FINGERPRINT_SAMPLE:
                handle.seek(size - _FINGERPRINT_SAMPLE)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


MODEL_FILES = (  # copied beside every saved or exported model
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def copy_model_files(src: Path, dst: Path, *, config: bool = True) -> None:
    """Copy the tokenizer files and (unless ``config`` is False) the config and generation
    config that exist in ``src``."""
    for fname in MODEL_FILES if config else MODEL_FILES[2:]:
        if (Path(src) / fname).is_file():
            shutil.copy2(Path(src) / fname, Path(dst) / fname)


def tensor_digests(directory: Path) -> dict[str, str]:
    """sha256 of the bytes of every tensor in the ``*.safetensors`` files of ``directory``
    (codes, scales, zero points and the rest), by tensor name: equal digests are bit-identical
    weights, whatever the files' metadata or order."""
    import torch
    from safetensors import safe_open

    digests = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
                flat = reader.get_tensor(key).contiguous().view(-1)
                digests[key] = hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()
    return digests
