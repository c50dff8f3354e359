"""The sensitivity probes through the sweep machinery (issue 17): `lowbit sensitivity` of the
built-in model in one process against `lowbit sensitivity --ray --workers N` (the blocks cut
into N shards of balanced cost, each a Ray task recorded in a results store, merged): wall
time of each whole command (Python and Ray start included), whether the two tables' figures
are identical (content hash), and the shards' own seconds.

    .venv/bin/python bench/ray_sensitivity.py                    # issue 6's protocol
    .venv/bin/python bench/ray_sensitivity.py --bits 4 --algorithm rtn --calib-windows 8

Protocol by default: issue 6's sensitivity (GPTQ INT2/3/4/8 g64 sym over all 210 linear layers,
calibration wiki.valid.tokens 32 × 512, seed 0; KL on 2 probe windows × 192 tokens). Writes
bench/results/ray_sensitivity[-NAME].json; the tables go to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

DATA = Path(os.environ.get("LOWBIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
CLI = [sys.executable, "-m", "lowbit.cli.main"]


def run(cmd: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    table = json.loads(out.read_text())
    return {
        "wall_s": wall,
        "figures_sha256": table["content_sha256"]["figures"],
        "entries": len(table["entries"]),
        "table_timings_s": table.get("timings_s"),
    }


def shards(store: Path) -> list[dict]:
    from lowbit.sweep.store import open_store

    s = open_store(store, create=False)
    try:
        return [
            {"name": t.name, "blocks": t.config["probe"]["blocks"], "seconds": t.seconds,
             "status": t.status}
            for t in s.trials()
        ]  # fmt: skip
    finally:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bits", type=int, action="append")
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--algorithm", default="gptq")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--workers", type=int, action="append")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bits = args.bits or [2, 3, 4, 8]
    valid = DATA / "wikitext-2" / "wiki.valid.tokens"
    common = ["smollm2-135m", "--calib-text", str(valid), "--calib-windows",
              str(args.calib_windows), "--group-size", str(args.group), "--algorithm",
              args.algorithm, *[a for b in bits for a in ("--bits", str(b))]]  # fmt: skip
    record: dict = {"protocol": {"bits": bits, "group": args.group, "algorithm": args.algorithm,
                                 "calib_windows": args.calib_windows, "ctx": 512,
                                 "probe": "2 x 192 (defaults)"}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        here = work / "here.json"
        record["one_process"] = run([*CLI, "sensitivity", *common, "-o", str(here)], here)
        for n in args.workers or [2]:
            out = work / f"ray{n}.json"
            cmd = [*CLI, "sensitivity", *common, "-o", str(out), "--ray", "--workers", str(n)]
            row = run(cmd, out)
            row["shards"] = shards(work / f"ray{n}.results.sqlite")
            row["identical_figures"] = (
                row["figures_sha256"] == record["one_process"]["figures_sha256"]
            )
            record[f"ray_{n}_workers"] = row
    name = "ray_sensitivity" + (f"-{args.out}" if args.out else "")
    write_result(RESULTS / f"{name}.json", record)
    print(json.dumps({k: v for k, v in record.items() if k != "protocol"}, indent=1))


if __name__ == "__main__":
    main()
