"""Prepare, on this machine, what the GPU check (bench/gpu.py) needs on the device machine,
which reaches nothing outside itself and receives at most 64 MiB per call:

- ``bench/gpu_data/common/``: ``data.tar.xz`` (the two WikiText-2 files of the protocol and
  every local task's files), the GGUF manifest and the commit (the device's copy of the tree
  has no .git);
- ``bench/gpu_data/gguf-0/part``, ``gguf-1/part``: the built-in model's GGUF file (98.4 MB, more
  than one call carries) in two parts, one per call (bench/gpu_steps/data.py);
- with ``--wheels``: ``.whl/``, the Python packages missing on the device (KINDS.md's list) for
  CPython 3.12 on manylinux x86_64: greenlet (the block runner), gguf (the GGUF conversion),
  lm-eval with datasets, dill and multiprocess (the task step), and compressed-tensors with its
  missing dependencies (export; imported by nothing the check runs). Call a carries them and
  installs them under /tmp/site, where call b finds them while the machine stays warm.

Both folders are ignored by git (.gitignore). Then it prints what each of the two device calls
carries, the working tree included, against the 64 MiB limit. Run it in the checkout the GPU
session runs from (the device tool sends that checkout, whichever worktree calls it).

    python bench/gpu_prepare.py --wheels
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lowbit") is None:
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from bench.gpu_steps.data import pack_data, split_gguf  # noqa: E402
from bench.gpu_steps.record import commit  # noqa: E402

LIMIT = 64 * 2**20
WHEELS = (  # pinned to the versions lowbit is tested with here; none of them is on the device
    "greenlet==3.5.6",
    "gguf==0.19.0",
    "compressed-tensors==0.20.1",
    "pydantic==2.14.4",  # compressed-tensors → pydantic, loguru
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",  # pydantic_core needs >= 4.16; the device's may be older
    "loguru==0.7.3",
    "lm_eval==0.4.13",  # the task step (issue 19) → datasets, dill, multiprocess
    "datasets==4.8.5",  # not 5.x: it needs pyarrow >= 24, the device's may be older
    "dill==0.4.1",
    "multiprocess==0.70.19",
)
FIRST_PART = 44 * 2**20  # call a carries the wheels (14 MiB) and this much of the model
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
CALLS = {  # the carry list of each device call (bench/gpu_run.sh); b uses a's installed wheels
    "a": (".whl", "bench/gpu_data/gguf-0"),
    "b": ("bench/gpu_data/common", "bench/gpu_data/gguf-1"),
}


def download_wheels(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *WHEELS], check=True)


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_size(root: Path) -> int:
    """Bytes of what travels with every call: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout  # fmt: skip
    files = {root / name for name in out.decode().split("\0") if name}
    total = sum(p.stat().st_size for p in files if p.is_file())
    shared = root / "shared"
    return total + (size(shared) if shared.is_dir() else 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, help="Data directory (default: $LOWBIT_DATA_DIR or ../shared/data)."
    )
    p.add_argument("--wheels", action="store_true", help="Download the wheels into .whl/.")
    args = p.parse_args()
    from lowbit.evaluation.text import data_dir
    from lowbit.models.builtin import builtin_gguf

    root = ROOT / "bench" / "gpu_data"
    pack_data(args.data or data_dir(), root)
    manifest = split_gguf(builtin_gguf("smollm2-135m"), root, first=FIRST_PART)
    (root / "common" / "commit.txt").write_text(f"{commit(ROOT)}\n")
    print(f"{manifest['name']}: {manifest['size'] / 1e6:.1f} MB in {len(manifest['parts'])} parts")
    if args.wheels:
        download_wheels(ROOT / ".whl")
    tree = tree_size(ROOT)
    print(f"working tree (travels with every call): {tree / 2**20:.1f} MiB")
    ok = True
    for call, carry in CALLS.items():
        total = tree + sum(size(ROOT / c) for c in carry)
        ok &= total <= LIMIT
        print(f"call {call}: carry {list(carry)}: {total / 2**20:.1f} MiB of 64 MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
