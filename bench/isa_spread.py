"""How far GPTQ figures move when torch's CPU kernels change (issue 18: figures anyone can
re-run). The same quantization run on a host with another vector ISA (AVX-512 against AVX2)
runs other float32 kernels, so its last bits differ; GPTQ's rounding decisions can amplify
them. ``ATEN_CPU_CAPABILITY`` makes torch run the kernels of a lower ISA on this host, which
stands in for that other host.

For each capability (default: this host's own and ``default``, torch's plain C++ kernels):
``lowbit quantize`` of the built-in model on the demo's protocol (built-in calibration text,
32 × 512 windows, seed 0) with GPTQ at each ``--bits`` (group 64) and with RTN (a control: no
calibration, expected bit-identical), then ``lowbit eval`` of each GPTQ model under this host's
own kernels (built-in evaluation text, 40 × 512), so only the quantization differs. Reported:
the codes (unpacked) and fp16 scales that differ from the first capability's, and the KL and
perplexity of each. ``complete`` is false until every run is in.

Usage: .venv/bin/python bench/isa_spread.py [--bits 4] [--capabilities native default]
       .venv/bin/python bench/isa_spread.py --recount   (compare a finished run's models again)
Result: bench/results/isa_spread.json (quantized models under bench/results/isa_spread/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, write_result

OUT = RESULTS / "isa_spread"
RESULT = RESULTS / "isa_spread.json"
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]


def run(cmd: list[str], capability: str | None) -> float:
    """Run ``cmd`` with torch's kernels of ``capability`` (None: this host's own); seconds."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    t0 = time.perf_counter()
    print("$", " ".join(cmd[3:]), f"(ATEN_CPU_CAPABILITY={capability or 'unset'})", flush=True)
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def codes_differ(a: Path, b: Path, bits: int) -> dict:
    """The codes (``*.qcodes``, unpacked from ``bits``-bit fields) and the scales (``*.qscale``)
    of two saved models, compared element by element."""
    from safetensors.torch import load_file

    from lowbit.formats.packing import unpack

    n = diff = scales = scales_diff = 0
    for f in sorted(a.glob("*.safetensors")):
        ta, tb = load_file(f), load_file(b / f.name)
        for k, x in ta.items():
            if k.endswith(".qcodes"):
                count = x.numel() * 8 // bits
                ca, cb = unpack(x, bits, count, False), unpack(tb[k], bits, count, False)
                n, diff = n + count, diff + int((ca != cb).sum())
            elif k.endswith(".qscale"):
                scales, scales_diff = scales + x.numel(), scales_diff + int((x != tb[k]).sum())
    return {"codes": n, "codes_differ": diff, "fraction": diff / n if n else None,
            "scales": scales, "scales_differ": scales_diff}  # fmt: skip


# the sha256 of one float32 matrix product (a linear layer's shape), printed by a child process
PRODUCT = ("import hashlib, torch; g = torch.Generator().manual_seed(0); "
           "a, b = torch.randn(512, 576, generator=g), torch.randn(576, 1536, generator=g); "
           "print(hashlib.sha256((a @ b).numpy().tobytes()).hexdigest()[:16])")  # fmt: skip


def product_sha256(cap: str) -> str:
    """The hash of :data:`PRODUCT` computed with torch's kernels of ``cap``."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if cap != "native":
        env["ATEN_CPU_CAPABILITY"] = cap
    run = subprocess.run([sys.executable, "-c", PRODUCT], env=env, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return run.stdout.strip()


def model_dir(algo: str, bits: int, cap: str) -> Path:
    return OUT / f"{algo}-w{bits}-{cap}"


def quantize(d: Path, options: list[str], cap: str | None) -> float:
    cmd = [*LOWBIT, "quantize", "smollm2-135m", *options, "-o", str(d), "--overwrite"]
    return run(cmd, None if cap == "native" else cap)


def evaluate(d: Path) -> dict:
    out = d.with_suffix(".eval.json")
    run([*LOWBIT, "eval", str(d), "-o", str(out), "--overwrite"], None)
    res = json.loads(out.read_text())["results"]["model"]
    return {"perplexity": res["perplexity"], "kl_mean": res["kl"]["mean"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, nargs="+", default=[4])
    parser.add_argument("--capabilities", nargs="+", default=["native", "default"])
    parser.add_argument("--recount", action="store_true",
                        help="compare the saved models of a finished run again (and hash the "
                        "matrix product under each capability), only")  # fmt: skip
    args = parser.parse_args()
    caps = list(dict.fromkeys(args.capabilities))  # each once: the first is the reference
    if args.recount:
        recount(caps)
        return
    import torch

    # this process runs with the host's kernels unless ATEN_CPU_CAPABILITY is set here too
    record: dict = {"native_capability": torch.backends.cpu.get_cpu_capability(), "runs": {},
                    "product_sha256": {c: product_sha256(c) for c in caps},
                    "complete": False}  # fmt: skip
    first: dict[str, Path] = {}
    for cap in caps:
        for algo, bits in [("rtn", 4), *(("gptq", b) for b in args.bits)]:
            key = f"{algo} W{bits} g64"
            options = ["--bits", str(bits), "--group-size", "64", "--algorithm", algo]
            options += ["--calib-windows", "32"] if algo == "gptq" else []
            d = model_dir(algo, bits, cap)
            secs = quantize(d, options, cap)
            entry = {"capability": cap, "bits": bits, "dir": d.name, "quantize_s": secs}
            if algo == "gptq":
                entry |= evaluate(d)
            if key in first:
                entry["codes_vs_first"] = codes_differ(first[key], d, bits)
            first.setdefault(key, d)
            record["runs"][f"{key} {cap}"] = entry
            write_result(RESULT, record)
            print(key, cap, json.dumps(entry), flush=True)
    record["complete"] = True
    write_result(RESULT, record)


def recount(caps: list[str]) -> None:
    """``codes_vs_first`` of every run of the result file again, from the models under OUT."""
    record = json.loads(RESULT.read_text())
    record.pop("provenance", None)
    record["product_sha256"] = {c: product_sha256(c) for c in caps}
    first: dict[str, Path] = {}
    for name, entry in record["runs"].items():
        key = name.rsplit(" ", 1)[0]  # "gptq W4 g64"
        algo, bits = key.split()[0], int(key.split()[1].removeprefix("W"))
        d = model_dir(algo, bits, entry["capability"])
        if key in first:
            entry["codes_vs_first"] = codes_differ(first[key], d, bits)
            print(name, json.dumps(entry["codes_vs_first"]), flush=True)
        first.setdefault(key, d)
    record["recounted"] = "codes_vs_first compared again by --recount (codes unpacked)"
    write_result(RESULT, record)


if __name__ == "__main__":
    main()
