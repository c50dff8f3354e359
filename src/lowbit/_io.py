"""Atomic file and directory output, content fingerprints and provenance.

Nothing lowbit writes can look complete unless it is: files are written to a temporary name in
the same directory and renamed; directories are built under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lowbit.errors import ArtefactError, OutputExistsError, OutputPathError


def check_new_output(path: Path, *, overwrite: bool = False) -> None:
    """Refuse, before any work, an existing output path unless ``overwrite``, and a path that
    cannot be written: its nearest existing folder must be a folder in which a file can be
    created (tried with a temporary file, removed at once: permissions alone do not tell a
    read-only file system or /proc)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"output {path} already exists; choose another path or pass --overwrite"
        )
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(
            f"output {path} cannot be created: {folder} is a file, not a directory; "
            "choose another output path"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".lowbit-probe-", dir=folder)
    except OSError as exc:
        raise OutputPathError(
            f"output {path} cannot be created: {folder} is not writable ({exc.strerror}); "
            "choose an output path in a writable folder"
        ) from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_dir(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; rename it to ``path`` only on success."""
    path = Path(path)
    check_new_output(path, overwrite=overwrite)
    with _no_space_named(path, "directory"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        try:
            yield tmp
            publish_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# every output published by atomic_dir / atomic_path in this process, in order (the command
# line names them when a run is interrupted: what is listed is complete, nothing else exists)
PUBLISHED: list[Path] = []


@contextlib.contextmanager
def _no_space_named(path: Path, kind: str) -> Iterator[None]:
    """A full disk (ENOSPC, a quota, or a writer library's own words for them) becomes an
    error naming the output; the partial output is already removed."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise OutputPathError(
            f"no space left on the device of {path} while writing this {kind}: the partial "
            f"{kind} was removed, so nothing that looks complete is left; free space or "
            "choose another output path"
        ) from exc


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota."""
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "StorageFull" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def publish_dir(tmp: Path, path: Path) -> None:
    """Give the finished directory ``tmp`` plain modes and rename it to ``path`` (replacing
    what ``path`` held)."""
    _public(tmp, directory=True)
    for child in tmp.rglob("*"):  # libraries may write through mkstemp (mode 0600)
        _public(child, directory=child.is_dir())
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    PUBLISHED.append(path)


@contextlib.contextmanager
def cache_dir_once(path: Path) -> Iterator[Path]:
    """Yield a temporary directory to fill and publish it as ``path`` with one rename. If another
    process published ``path`` first, its directory is kept and ours discarded: a complete
    cache entry is never replaced while someone may be reading it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        _public(tmp, directory=True)
        for child in tmp.rglob("*"):
            _public(child, directory=child.is_dir())
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path, *, overwrite: bool = False, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it to ``path`` only on success."""
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` for a writer that opens files itself; rename
    it to ``path`` only on success."""
    path = Path(path)
    check_new_output(path, overwrite=overwrite)
    with _no_space_named(path, "file"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            _public(Path(tmp), directory=False)
            os.replace(tmp, path)
            PUBLISHED.append(path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _public(path: Path, *, directory: bool) -> None:
    """Give a temporary file or directory the modes a plain open()/mkdir() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def write_json(path: Path, data: Any, *, overwrite: bool = False) -> None:
    """``data`` as JSON at ``path``, atomically. A NaN or infinity is refused, naming where it
    is: JSON has no such numbers, and a bare ``NaN`` in a result hides a broken run."""
    check_finite_json(data, f"the result for {path}")
    with atomic_file(path, overwrite=overwrite) as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str, allow_nan=False)
        handle.write("\n")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_finite_json(data: Any, what: str, where: str = "") -> None:
    """Refuse a NaN or infinite float anywhere in ``data`` (dicts, lists, tuples)."""
    import math

    if isinstance(data, float) and not math.isfinite(data):
        raise ArtefactError(
            f"{what} holds {data} at {where or 'the top'}: a non-finite figure comes from a "
            "non-finite model or input; nothing was written (check the model's weights and "
            "run in float32)"
        )
    if isinstance(data, dict):
        for key, value in data.items():
            check_finite_json(value, what, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            check_finite_json(value, what, f"{where}[{i}]")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose arithmetic a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "safetensors", "numpy", "accelerate", "gguf"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on (no heavy imports)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "vector_isa": vector_isa(),
    }
    if os.environ.get("ATEN_CPU_CAPABILITY"):  # torch told to run another ISA's kernels
        info["aten_cpu_capability"] = os.environ["ATEN_CPU_CAPABILITY"]
    with contextlib.suppress(ImportError):
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    return info


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# The CPU's vector extensions that change which float kernels torch runs (and so the last bits
# of a float32 result, which GPTQ's rounding decisions can amplify): "AMD EPYC" alone names
# hosts with and without AVX-512.
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def vector_isa(cpuinfo: str | None = None) -> list[str]:
    """The flags of :data:`_ISA_FLAGS` the first CPU of ``/proc/cpuinfo`` (or ``cpuinfo``)
    has, in that order; empty where there is no such file."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in _ISA_FLAGS if f in have]
    return []


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: ``VmHWM`` of /proc/self/status where
    there is one (the high-water mark of this program's own address space), else
    ``getrusage``'s ``ru_maxrss``, which on Linux also keeps the RSS of the address space
    replaced by ``exec`` (a forked copy of a large parent would count as this process)."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# keys of a result that describe how a run went (time, memory, machine), not what it produced
_VOLATILE = {
    "timings_s", "created_unix", "peak_rss_bytes", "machine", "libraries", "runtime", "execution",
}  # fmt: skip


def figures_sha256(result: Any) -> str:
    """sha256 of a result's figures: its canonical JSON without the keys that describe how
    the run went (times: keys ending ``_s`` or ``seconds``; memory; machine; libraries;
    runtime and execution; a ``content_sha256`` already there). Two runs that computed the
    same numbers have the same hash."""
    return hashlib.sha256(
        json.dumps(_stable(result), sort_keys=True, default=str).encode()
    ).hexdigest()


def _stable(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _stable(v)
            for k, v in data.items()
            if k not in _VOLATILE
            and k != "content_sha256"
            and not str(k).endswith(("_s", "seconds"))
        }
    if isinstance(data, list | tuple):
        return [_stable(v) for v in data]
    return data


def tensors_sha256(folder: Path) -> str:
    """sha256 of every tensor in the safetensors files of ``folder``, by name (name, dtype,
    shape and bytes, in name order): the same codes, scales and zero points give the same
    hash however they are split into shards."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        readers = {}
        for file in sorted(Path(folder).glob("*.safetensors")):
            reader = stack.enter_context(safe_open(str(file), framework="pt"))
            readers.update(dict.fromkeys(reader.keys(), reader))
        for key in sorted(readers):
            tensor = readers[key].get_tensor(key).contiguous()
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def output_sha256(path: Path) -> str:
    """A file's sha256, or a folder's :func:`tensors_sha256` (its other files, such as the
    manifest with its timings, describe the run)."""
    path = Path(path)
    return tensors_sha256(path) if path.is_dir() else file_sha256(path)
