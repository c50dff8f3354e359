"""In-context iterated allocation against the additive exact plan, the ExLlamaV3-style greedy,
the llama.cpp-style rule and uniform plans on the built-in model (issue 16, parts 1 and 6).

A **reduced protocol** (the spine's 128 × 512 calibration windows, 40 × 512 evaluation
windows and GPTQ do not fit the shared 2-core machine): RTN, menu INT2/3/4 group 64 (sym),
calibration windows 2 × 128 of wiki.valid.tokens (seed 0; RTN needs none, the in-context KL is
measured on the first one), evaluation WikiText-2 raw test 16 × 128. Two `lowbit` commands:
(1) `lowbit sensitivity --proxies-only` (the single-layer table: bits, Hessian and Fisher
    proxies; the single-layer KL probes are too slow here, so the additive exact plan uses the
    Fisher proxy, whose rank correlation with the measured KL was 0.95 in issue 6);
(2) `lowbit pareto --sensitivity in-context` at 3.25 and 4.0 bits per weight: for each
    budget the additive exact plan, the in-context iterated plan, the in-context greedy and
    the llama.cpp-style plan, plus uniform W3 g64 and W4 g64; each quantized and evaluated.

Usage: .venv/bin/python bench/incontext.py [--steps 1,2] [--probe-ctx 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, write_result

from allocation import run as run_command

OUT = RESULTS / "incontext"
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]


def run(cmd: list[str]) -> dict:
    return {"command": "lowbit " + " ".join(cmd[3:]), **run_command(cmd)}


def table_command(valid: str, windows: int, out: Path) -> list[str]:
    """Step 1: the proxies-only RTN table (INT2/3/4 g64) of ``windows`` × 128 calibration
    windows of ``valid`` (also bench/incontext_quick.py's, at other window counts)."""
    return [*LOWBIT, "sensitivity", "smollm2-135m", "--calib-text", valid, "--calib-windows",
            str(windows), "--ctx", "128", "--algorithm", "rtn", "--bits", "2", "--bits", "3",
            "--bits", "4", "--group-size", "64", "--proxies-only", "--probe-ctx", "64",
            "-o", str(out), "--overwrite"]  # fmt: skip


def summary(sweep: dict) -> list[dict]:
    rows = []
    for p in sweep["points"]:
        alloc = p.get("allocation") or {}
        rows.append(
            {
                "name": p["name"],
                "bits_per_weight_linear": p["bits_per_weight_linear"],
                "kl_mean": p["kl_mean"],
                "perplexity": p["perplexity"],
                "predicted_loss": p["predicted_loss"],
                "rounds": [
                    {k: r[k] for k in ("round", "predicted_kl", "measured_kl", "decoder_passes")}
                    for r in alloc.get("rounds", [])
                ],
                "allocation_wall_s": alloc.get("wall_s"),
                "decoder_passes": (alloc.get("stats") or {}).get("decoder_passes"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="1,2")
    parser.add_argument("--probe-ctx", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boundary", type=int, default=12)
    parser.add_argument("--eval-windows", type=int, default=16)
    args = parser.parse_args()
    steps = {int(s) for s in args.steps.split(",")}
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    valid = str(data / "wikitext-2" / "wiki.valid.tokens")
    test = str(data / "wikitext-2-raw" / "wiki.test.raw")
    OUT.mkdir(parents=True, exist_ok=True)
    calib = ["--calib-text", valid, "--calib-windows", "2", "--ctx", "128"]
    table = OUT / "sens-rtn-234.json"
    previous = OUT / "bench.json"  # a run of one step keeps the other step's record
    record: dict = json.loads(previous.read_text()) if previous.exists() else {}
    record.pop("provenance", None)
    record["protocol"] = (
        f"reduced: RTN, calib 2 x 128, eval {args.eval_windows} x 128, in-context probe "
        f"1 x {args.probe_ctx} tokens (see docstring)"
    )
    if 1 in steps:
        record["sensitivity"] = run(table_command(valid, 2, table))
    if 2 in steps:
        cmd = [*LOWBIT, "pareto", "smollm2-135m", "--table", str(table), "-o", str(OUT / "sweep"),
               "--overwrite", *calib, "--eval-text", test, "--windows", str(args.eval_windows),
               "--algorithm", "rtn", "--metric", "fisher", "--sensitivity", "in-context",
               "--rounds", str(args.rounds), "--boundary", str(args.boundary),
               "--probe-windows", "1", "--probe-ctx", str(args.probe_ctx),
               "--budget", "3.25", "--budget", "4.0", "--uniform-bits", "3", "--uniform-bits",
               "4", "--uniform-group", "64"]  # fmt: skip
        record["pareto"] = run(cmd)
        sweep = json.loads((OUT / "sweep" / "pareto.json").read_text())
        record["points"] = summary(sweep)
        record["additivity"] = sweep.get("additivity")
    out = write_result(OUT / "bench.json", record)
    print(json.dumps(out.get("points", []), indent=1))


if __name__ == "__main__":
    main()
