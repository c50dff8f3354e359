"""RTN's symmetric scale rule, re-measured (issue 18, "fair baselines"): the extreme rule
(llama.cpp's: each group's largest weight on the code -2^(b-1)) against the half-step rule (the
GPTQ reference's absmax / ((2^b - 1) / 2), which clips a positive extreme by half a step), for
RTN INT4 (and INT3) at groups 32, 64 and 128 on the built-in model: perplexity and KL divergence
to the original on an evaluation text, through lowbit's own CLI (one reference, cached).

    .venv/bin/python bench/rtn_scale.py     # the spine's protocol: WikiText-2 raw test, 40 × 512
    .venv/bin/python bench/rtn_scale.py --text FILE --ctx 256 --windows 10 --out NAME

writes bench/results/rtn_scale[-NAME].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

DATA = Path(os.environ.get("LOWBIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
CLI = [sys.executable, "-c", "from lowbit.cli.main import main; main()"]


def plan_yaml(bits: int, group: int, rule: str) -> str:
    fmt = f"{{type: int, bits: {bits}, symmetric: true, scale_rule: {rule}}}"
    return (
        "lowbit_plan_version: 1\n"
        f"default: {{format: {fmt}, granularity: {{type: group, size: {group}}}, "
        "algorithm: {name: rtn}}\n"
    )


def measure(work: Path, bits: int, group: int, rule: str, args: argparse.Namespace) -> dict:
    name = f"w{bits}-g{group}-{rule}"
    plan = work / f"{name}.yaml"
    plan.write_text(plan_yaml(bits, group, rule))
    out, result = work / name, work / f"{name}.json"
    subprocess.run(
        [*CLI, "quantize", "smollm2-135m", "-o", str(out), "--plan", str(plan)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [
            *CLI,
            "eval",
            str(out),
            "--eval-text",
            str(args.text),
            "--ctx",
            str(args.ctx),
            "--windows",
            str(args.windows),
            "-o",
            str(result),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    model = json.loads(result.read_text())["results"]["model"]
    row = {
        "bits": bits,
        "group": group,
        "rule": rule,
        "perplexity": model["perplexity"],
        "kl_mean": model["kl"]["mean"],
        "kl_stderr": model["kl"]["stderr"],
        "top1_agreement": model["top1_agreement"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", type=Path, default=DATA / "wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--bits", type=int, action="append")
    ap.add_argument("--group", type=int, action="append")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in args.bits or [4]:
            for group in args.group or [32, 64, 128]:
                for rule in ("half-step", "extreme"):
                    rows.append(measure(Path(tmp), bits, group, rule, args))
    name = "rtn_scale" + (f"-{args.out}" if args.out else "")
    write_result(
        RESULTS / f"{name}.json",
        {
            "protocol": {
                "text": str(args.text),
                "ctx": args.ctx,
                "windows": args.windows,
                "model": "smollm2-135m",
                "algorithm": "rtn",
                "symmetric": True,
            },
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
