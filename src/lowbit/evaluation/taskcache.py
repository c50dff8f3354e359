"""A model's task results, computed once and cached on disk (the reference of every comparison).

``lowbit compare REF Q1 --tasks T`` then ``lowbit compare REF Q2 --tasks T`` runs the reference
on ``T`` once: its :class:`TaskRun` (every sample) is written as JSON under the cache, keyed by
everything its numbers depend on (:class:`TaskRunKey`), and read back, checked field by field,
the next time. Only original models are cached (a model fingerprint names their weight files);
a quantized directory is always run. Nothing is pickled; files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lowbit._io import file_sha256, write_json
from lowbit.errors import ArtefactError

VERSION = 1


@dataclass(frozen=True)
class TaskRunKey:
    """What a model's task results depend on."""

    model: str  # the model's fingerprint (its weight files)
    tokenizer: str  # tokenizer_fingerprint
    tasks: tuple[str, ...]
    limit: int | None
    max_gen_toks: int | None
    batch_size: int  # padding in a batch can move a score in its last bits
    task_files: str  # the local task directories (named by data, code and harness version) and
    # the contents of the user's include paths
    harness: str  # lm-evaluation-harness version
    dtype: str
    device: str  # device kind: a GPU's kernels round differently from a CPU's

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def files_fingerprint(task_dirs: list[Path], include_paths: tuple[str, ...]) -> str:
    """The local task directories by name (their names carry their own fingerprints) and every
    file under the user's include paths by content."""
    h = hashlib.sha256()
    for d in task_dirs:
        h.update(f"dir {Path(d).name}\n".encode())
    for root in include_paths:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            h.update(f"file {path.relative_to(root)} {file_sha256(path)}\n".encode())
    return h.hexdigest()[:20]


def cache_file(root: Path, key: TaskRunKey) -> Path:
    return root / "task-runs" / f"{key.digest()}.json"


def load(path: Path, key: TaskRunKey) -> Any | None:
    """The cached TaskRun at ``path`` for ``key``, or None when there is none. A file whose key
    differs (a hash collision or a hand-edited file) or that does not parse is an error naming
    the file and the fix."""
    from lowbit.evaluation.samples import SampleRecord
    from lowbit.evaluation.task_results import TaskRun

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        stored = data["key"]
        run = data["run"]
        samples = {
            t: [SampleRecord.from_dict(s) for s in recs] for t, recs in run["samples"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ArtefactError(
            f"{path}: a damaged cached task result ({type(exc).__name__}: {exc}); delete it "
            "and run again"
        ) from exc
    expected = json.loads(json.dumps(asdict(key)))
    if data.get("version") != VERSION or stored != expected:
        differ = sorted(k for k in expected if stored.get(k) != expected[k])
        raise ArtefactError(
            f"{path}: a cached task result for another run (fields differ: "
            f"{', '.join(differ) or 'version'}); delete it and run again"
        )
    return TaskRun(run["metrics"], samples, {**run["info"], "cache": str(path)})


def store(path: Path, key: TaskRunKey, run: Any) -> None:
    """Write ``run`` for ``key`` atomically (replacing an older file of the same key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"version": VERSION, "key": asdict(key), "run": run.to_dict()},
               overwrite=True)  # fmt: skip
