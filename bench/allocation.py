"""Sensitivity, exact allocation and the Pareto sweep on the built-in model (issue 6).

Steps, each a `lowbit` command run as a user would (outputs under bench/results/allocation):
(1) `lowbit sensitivity` of the menu GPTQ INT2/3/4/8 group 64 (sym) over all 210 linear layers,
    timed, with peak RSS; calibration 32 × 512 windows of wiki.valid.tokens (seed 0);
(2) the same for GPTQ W4 g128, W5 g64 and W6 g64, merged into one 7-spec table;
(3) `lowbit pareto` on that table: exact and llama.cpp-style plans over a sweep of budgets and
    uniform GPTQ plans, each quantized and evaluated on WikiText-2 raw test (40 × 512).

Usage: .venv/bin/python bench/allocation.py [--steps 1,2,3] [--calib-windows 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "allocation"
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]
EXTRA_MENU = [
    {
        "format": {"type": "int", "bits": b, "symmetric": True},
        "granularity": {"type": "group", "size": g},
        "algorithm": {"name": "gptq"},
    }
    for b, g in ((4, 128), (5, 64), (6, 64))
]
# llama.cpp's own mixes of the same model on the same protocol (issue 6): bits per weight over
# the linear layers, KL divergence
LLAMACPP = {"Q4_0": (4.50, 0.301), "Q3_K_M": (4.63, 0.142), "Q4_K_M": (5.53, 0.054)}


def run(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": time.perf_counter() - t0, "peak_rss_kb": max(peak, before)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="1,2,3")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--pareto-calib-windows", type=int, default=32)
    args = parser.parse_args()
    steps = {int(s) for s in args.steps.split(",")}
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    test = str(data / "wikitext-2-raw" / "wiki.test.raw")
    OUT.mkdir(parents=True, exist_ok=True)
    common = ["smollm2-135m", "--calib-text", valid, "--calib-windows", str(args.calib_windows)]
    record = {}
    if 1 in steps:
        record["sensitivity_int2348_g64"] = run(
            [
                *LOWBIT,
                "sensitivity",
                *common,
                "--bits",
                "2",
                "--bits",
                "3",
                "--bits",
                "4",
                "--bits",
                "8",
                "--group-size",
                "64",
                "-o",
                str(OUT / "sens-2348.json"),
                "--overwrite",
            ]
        )
        # the run's own breakdown (sweep, Hessians, Fisher, probes) from the table it wrote
        table = json.loads((OUT / "sens-2348.json").read_text())
        record["sensitivity_int2348_g64"]["timings_s"] = table["timings_s"]
    if 2 in steps:
        menu = OUT / "extra-menu.json"
        menu.write_text(json.dumps(EXTRA_MENU))
        record["sensitivity_extra"] = run(
            [
                *LOWBIT,
                "sensitivity",
                *common,
                "--menu",
                str(menu),
                "-o",
                str(OUT / "sens-extra.json"),
                "--overwrite",
            ]
        )
        from lowbit.sensitivity.table import SensitivityTable, merge_tables

        merged = merge_tables(
            SensitivityTable.load(OUT / "sens-2348.json"),
            SensitivityTable.load(OUT / "sens-extra.json"),
        )
        (OUT / "sens-all.json").write_text(json.dumps(merged.to_dict(), indent=1))
    if 3 in steps:
        budgets = ["3.25", "4.0", "4.5", "4.63", "5.53"]
        cmd = [
            *LOWBIT,
            "pareto",
            "smollm2-135m",
            "--table",
            str(OUT / "sens-all.json"),
            "-o",
            str(OUT / "sweep"),
            "--resume",
            "--eval-text",
            test,
            "--windows",
            "40",
            "--calib-text",
            valid,
            "--calib-windows",
            str(args.pareto_calib_windows),
        ]
        for b in budgets:
            cmd += ["--budget", b]
        for b in (3, 4):
            cmd += ["--uniform-bits", str(b)]
        for g in (64, 128):
            cmd += ["--uniform-group", str(g)]
        record["pareto"] = run(cmd)
    record = write_result(OUT / f"bench-{int(time.time())}.json", record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
