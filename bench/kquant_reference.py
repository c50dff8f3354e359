"""lowbit's ``llama`` k-quant rule against llama.cpp's own C (issue 16, part 5; BENCHMARKS.md,
section "K-quants by llama.cpp's rule").

gguf-py has no k-quant quantizer, so the reference is llama.cpp's ``ggml-quants.c`` itself, as
vendored in the ``llama-cpp-python`` source distribution from PyPI: this script extracts
``vendor/llama.cpp/ggml``, compiles ``ggml-quants.c`` with ``gcc -O2 -ffp-contract=off`` (no
fused multiply-add, as a portable x86-64 build) into a shared library, and calls
``quantize_row_q{4,5,6}_K_ref`` through ctypes.

- ``--model``: every 2-D weight of the built-in model whose width is a multiple of 256, in
  Q4_K, Q5_K and Q6_K, by llama.cpp and by lowbit (``GGMLFormat(kind)``, min-max, then
  lowbit's GGUF block packer): identical bytes and blocks, and each rule's relative weight MSE
  (lowbit's ``cover`` rule beside it).
- ``--fixture PATH``: writes the unit tests' reference (safetensors: inputs ``x.<case>`` fp32
  and llama.cpp's bytes ``<kind>.<case>`` uint8), synthetic weights with the awkward cases (an
  all-zero sub-block, a tiny one, rows without negative weights, heavy tails).

Usage: .venv/bin/python bench/kquant_reference.py [--sdist llama_cpp_python-0.3.16.tar.gz]
[--model] [--fixture tests/formats/data/llama_kquant.safetensors] [--out kquant_reference.json]
Without ``--sdist`` the sdist is fetched with ``pip download llama-cpp-python==0.3.16``.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_result

VERSION = "0.3.16"
KINDS = ("q4_k", "q5_k", "q6_k")
TYPE_SIZE = {"q4_k": 144, "q5_k": 176, "q6_k": 210}
STUBS = """#include <stdlib.h>
#include <stdint.h>
const char * ggml_type_name(int t) { return "?"; }
void ggml_abort(const char * f, int l, const char * fmt, ...) { abort(); }
size_t ggml_row_size(int t, int64_t n) { abort(); }
size_t ggml_type_size(int t) { abort(); }
"""


def fetch_sdist(where: Path) -> Path:
    pip = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}"]
    subprocess.run([*pip, "--no-deps", "--no-binary", ":all:", "-d", str(where)], check=True)
    return next(where.glob("llama_cpp_python-*.tar.gz"))


def build(sdist: Path, where: Path) -> ctypes.CDLL:
    """llama.cpp's ggml-quants.c from ``sdist`` compiled into a library under ``where``."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/ggml/" in m.name]
        tar.extractall(where, members=members, filter="data")
    ggml = next(where.glob("*/vendor/llama.cpp/ggml"))
    (where / "stubs.c").write_text(STUBS)
    lib = where / "libggml_quants.so"
    flags = ["-O2", "-ffp-contract=off", "-fPIC", "-shared", "-w"]
    include = [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}"]
    sources = [str(ggml / "src" / "ggml-quants.c"), str(where / "stubs.c")]
    subprocess.run(["gcc", *flags, *include, *sources, "-lm", "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def llama_bytes(lib: ctypes.CDLL, kind: str, x: np.ndarray) -> np.ndarray:
    """llama.cpp's blocks of ``x`` (rows, cols), (rows, cols / 256 · type size) uint8."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    out = np.zeros((rows, cols // 256 * TYPE_SIZE[kind]), np.uint8)
    fn = getattr(lib, f"quantize_row_{kind[:2]}_K_ref")
    src, dst = x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)
    fn(src, dst, ctypes.c_int64(x.size))
    return out


def lowbit_bytes(kind: str, x: np.ndarray, rule: str = "llama") -> tuple[np.ndarray, np.ndarray]:
    """lowbit's blocks of ``x`` under ``rule`` and the weight they dequantize to."""
    import torch

    from lowbit.export.gguf_kblocks import ggml_blocks
    from lowbit.formats import GGMLFormat, PerGroup
    from lowbit.formats.quantize import quantize_weight

    qw = quantize_weight(torch.from_numpy(x), GGMLFormat(kind, rule=rule), PerGroup(256))
    blocks = ggml_blocks(kind, qw.codes.numpy(), qw.scale.numpy())
    return blocks, qw.dequantize().numpy()


def synthetic() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    edge = rng.standard_normal((8, 512)).astype(np.float32) * 0.02
    edge[:, :32] = 0.0  # all-zero sub-blocks
    edge[:, 64:96] = 1e-6  # sub-blocks far below their super-block's largest
    edge[0, 256:] = 0.0  # an all-zero super-block
    edge[1, 300:316] = 0.5  # an outlying Q6_K sub-block
    edge[2] = np.abs(edge[2])  # no negative weights
    return {
        "gauss": (rng.standard_normal((16, 512)) * 0.02).astype(np.float32),
        "heavy": (rng.standard_t(3, (16, 512)) * 0.01).astype(np.float32),
        "edge": edge,
    }


def write_fixture(lib: ctypes.CDLL, path: Path) -> None:
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for case, x in synthetic().items():
        tensors[f"x.{case}"] = x
        for kind in KINDS:
            tensors[f"{kind}.{case}"] = llama_bytes(lib, kind, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"source": f"llama-cpp-python {VERSION} sdist"})
    print(f"wrote {path}")


def model_rows(lib: ctypes.CDLL) -> dict[str, object]:
    from safetensors import safe_open

    from lowbit import api

    handle = api.load("smollm2-135m")
    total = {k: {"blocks": 0, "equal_blocks": 0, "bytes": 0, "equal_bytes": 0} for k in KINDS}
    err = {k: {"llama": 0.0, "cover": 0.0, "energy": 0.0} for k in KINDS}
    seconds = {k: {"llama.cpp": 0.0, "lowbit": 0.0} for k in KINDS}
    with safe_open(str(handle.weight_files[0]), "np") as f:
        for name in f.keys():
            W = f.get_tensor(name).astype(np.float32)
            if W.ndim != 2 or W.shape[1] % 256:
                continue
            for kind in KINDS:
                t0 = time.perf_counter()
                ref = llama_bytes(lib, kind, W)
                t1 = time.perf_counter()
                ours, Wq = lowbit_bytes(kind, W)
                t2 = time.perf_counter()
                _, Wc = lowbit_bytes(kind, W, "cover")
                seconds[kind]["llama.cpp"] += t1 - t0
                seconds[kind]["lowbit"] += t2 - t1
                a, b = ref.reshape(-1, TYPE_SIZE[kind]), ours.reshape(-1, TYPE_SIZE[kind])
                row = total[kind]
                row["blocks"] += a.shape[0]
                row["equal_blocks"] += int((a == b).all(axis=1).sum())
                row["bytes"] += a.size
                row["equal_bytes"] += int((a == b).sum())
                err[kind]["llama"] += float(((Wq - W) ** 2).sum())
                err[kind]["cover"] += float(((Wc - W) ** 2).sum())
                err[kind]["energy"] += float((W**2).sum())
            share = {k: total[k]["equal_blocks"] / total[k]["blocks"] for k in KINDS}
            print(name, share, flush=True)
    mse = {k: {r: err[k][r] / err[k]["energy"] for r in ("llama", "cover")} for k in KINDS}
    return {"identical": total, "relative_mse": mse, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdist", type=Path, default=None)
    parser.add_argument("--model", action="store_true")
    parser.add_argument("--fixture", type=Path, default=None)
    parser.add_argument("--out", default="kquant_reference.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        lib = build(sdist, Path(tmp))
        if args.fixture:
            write_fixture(lib, args.fixture)
        if args.model:
            record = {
                "reference": f"llama-cpp-python {VERSION} sdist, ggml-quants.c, gcc -O2 "
                "-ffp-contract=off",
                "model": "smollm2-135m, every 2-D weight of width a multiple of 256 (down_proj), "
                "min-max",
                **model_rows(lib),
            }
            write_result(RESULTS / args.out, record)


if __name__ == "__main__":
    main()
