"""Step ``ranks`` (issue 17): ``torchrun --nproc-per-node 1 -m lowbit quantize`` (the
data-parallel path: NCCL on a GPU, gloo on a CPU) against the plain ``python -m lowbit quantize``
of the same model and plan, on the same device: both start, and they agree.

Protocol: GPTQ W4 g64 symmetric of the step-1 model, ``windows`` × ``ctx`` calibration windows
of ``wiki.valid.tokens`` (seed 0). Compared: every integer tensor written (packed codes, byte by
byte), the largest difference of the floating-point ones (scales), and the wall time of each
process (start-up and model load included). The plain run's directory is kept for the
``tasks`` step (``figures["plain_dir"]``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data import CALIB_TEXT
from .record import Figures


@dataclass(frozen=True)
class RanksProtocol:
    windows: int = 32
    ctx: int = 512
    bits: int = 4
    group_size: int = 64


TINY_PROTOCOL = RanksProtocol(windows=4, ctx=64)


def _env(extra_paths: list[str]) -> dict[str, str]:
    """This process's import path for the children (the carried packages, lowbit's source and,
    on the device, the joined built-in model's namespace package)."""
    paths = [p for p in (*extra_paths, *sys.path) if p and Path(p).is_dir()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:6])} … exited {done.returncode}:\n{tail}")
    return time.perf_counter() - t0


def compare_dirs(one: Path, two: Path) -> dict[str, Any]:
    """Integer tensors byte by byte, floating tensors by their largest difference, over every
    safetensors shard of two saved quantized directories."""
    from safetensors.torch import load_file

    same = total = 0
    float_diff = 0.0
    shards = sorted(p.name for p in one.glob("*.safetensors"))
    if not shards or shards != sorted(p.name for p in two.glob("*.safetensors")):
        raise RuntimeError(f"{one} and {two} hold different shards")
    for name in shards:
        a, b = load_file(str(one / name)), load_file(str(two / name))
        if a.keys() != b.keys():
            raise RuntimeError(f"{name}: the two runs wrote different tensors")
        for key, x in a.items():
            if x.dtype.is_floating_point:
                diff = (x.float() - b[key].float()).abs().max()
                float_diff = max(float_diff, float(diff))
            else:
                same += int((x == b[key]).sum())
                total += x.numel()
    return {"code_elements": total, "code_elements_equal": same / max(total, 1),
            "max_abs_float_difference": float_diff, "shards": len(shards)}  # fmt: skip


def run_ranks(
    figures: Figures,
    model: str,
    data: Path,
    device: str,
    protocol: RanksProtocol,
    work: Path,
    *,
    extra_paths: list[str],
) -> None:
    """Fill ``figures``: both runs' wall times, their agreement, and the kept plain directory."""
    figures["protocol"] = asdict(protocol)
    work.mkdir(parents=True, exist_ok=True)
    env = _env(extra_paths)
    q = ["quantize", model, "--bits", str(protocol.bits), "--group-size",
         str(protocol.group_size), "--symmetric", "--algorithm", "gptq", "--calib-text",
         str(data / CALIB_TEXT), "--calib-windows", str(protocol.windows), "--ctx",
         str(protocol.ctx), "--seed", "0", "--device", device]  # fmt: skip
    plain, ranked = work / "plain", work / "torchrun-1"
    figures["plain_s"] = _run([sys.executable, "-m", "lowbit", *q, "-o", str(plain)], env,
                              work / "plain.log")  # fmt: skip
    figures["plain_dir"] = str(plain)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "1", "-m", "lowbit"]  # fmt: skip
    figures["torchrun_s"] = _run([*torchrun, *q, "-o", str(ranked)], env, work / "ranks.log")
    figures["agreement"] = compare_dirs(plain, ranked)
    figures["backend"] = "nccl" if device.startswith("cuda") else "gloo"


def lines(figures: Figures) -> list[str]:
    if "agreement" not in figures:
        return []
    a = figures["agreement"]
    return [
        f"torchrun 1 rank ({figures['backend']}) vs plain: codes equal "
        f"{a['code_elements_equal']:.4%} of {a['code_elements']}, max float diff "
        f"{a['max_abs_float_difference']:.3g}; wall {figures['torchrun_s']:.1f} s vs "
        f"{figures['plain_s']:.1f} s"
    ]
