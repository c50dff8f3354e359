"""kill -9 at random moments of ``lowbit quantize`` on the built-in model, each run resumed
with ``--resume`` (and killed again), until the campaign's kills are spent; the finished
directory's codes, scales and other tensors must be identical (sha256 per tensor) to an
uninterrupted run's.

    nice python bench/crash_resume.py --kills 10 --algorithm rtn

Each kill is a real SIGKILL of the process (``tests/helpers/killer.py``), S seconds after the
quantization proper began: S uniform over the time the blocks still to do took in the reference
run, plus a tenth (model loading excluded; the last tenth falls in the final writes). Writes
``bench/results/crash_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, calibration_options, write_result

from lowbit.models.files import tensor_digests


def quantize_args(out: Path, args: argparse.Namespace) -> list[str]:
    calib = ["--calib-windows", str(args.windows), "--ctx", str(args.ctx)]
    extra = calibration_options(args.algorithm, calib)
    return ["quantize", args.model, "-o", str(out), "--algorithm", args.algorithm, *extra]


def run(point: str | None, argv: list[str], cwd: Path) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, "-m", "tests.helpers.killer", point] if point else [
        sys.executable, "-m", "lowbit.cli.main"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode, time.perf_counter() - t0


def blocks_recorded(part: Path) -> int | None:
    try:
        return len(json.loads((part / "checkpoint.json").read_text())["blocks"])
    except (OSError, ValueError, KeyError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--algorithm", default="rtn")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="crash-resume-"))
    try:
        ref = work / "ref"
        _, ref_s = run("run:100000", quantize_args(ref, args), work)  # the timer never fires
        reference = tensor_digests(ref)
        ref_result = json.loads((work / "ref.result.json").read_text())["result"]
        quant_s = ref_result["quantize_s"]
        n_blocks = len(list(ref.glob("blocks-*.safetensors")))
        kills, chains, n = [], [], 0
        while len(kills) < args.kills:
            out = work / f"chain{len(chains)}"
            resume, steps = False, 0
            while not out.exists():
                left = 1.0 - (blocks_recorded(Path(f"{out}.partial")) or 0) / n_blocks
                s = rng.uniform(0.0, quant_s * (left + 0.1)) if len(kills) < args.kills else None
                argv = quantize_args(out, args) + (["--resume"] if resume else [])
                code, wall = run(f"run:{s:.3f}" if s is not None else None, argv, work)
                if code == -signal.SIGKILL:
                    part = Path(f"{out}.partial")
                    kills.append({"chain": len(chains), "after_s": round(s, 3), "wall_s": wall,
                                  "blocks_recorded": blocks_recorded(part)})  # fmt: skip
                    print(f"kill {len(kills)}: {s:.1f} s in, {kills[-1]['blocks_recorded']} "
                          "blocks recorded", flush=True)  # fmt: skip
                resume, steps = True, steps + 1
            identical = tensor_digests(out) == reference
            chains.append({"runs": steps, "identical": identical, "tensors": len(reference)})
            n += identical
            print(f"chain {len(chains)}: {steps} runs, identical: {identical}", flush=True)
            shutil.rmtree(out)
        record = {
            "model": args.model,
            "algorithm": args.algorithm,
            "windows": args.windows,
            "ctx": args.ctx,
            "reference_wall_s": ref_s,
            "reference_quantize_s": quant_s,
            "kills": kills,
            "chains": chains,
            "n_kills": len(kills),
            "chains_identical": n,
            "all_identical": n == len(chains),
        }
        write_result(RESULTS / "crash_resume.json", record)
        print(f"{len(kills)} kills in {len(chains)} chains; {n}/{len(chains)} identical")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
