"""Trust figures (issue 18): determinism of GPTQ on the built-in model and the bad-input
catalogue's count.

1. ``python -m lowbit quantize smollm2-135m`` (GPTQ W4 g64) three times, each in its own
   process, then ``lowbit eval`` of each saved model: the content hashes every result records
   (the quantized tensors, the figures) must be identical, as must the perplexities and KL.
2. The bad-input catalogue (tests/cli/test_bad_inputs.py) run through pytest: how many cases
   were tried and how many pass all four checks (message, exit code, no traceback, nothing
   written).

    nice python bench/trust.py [--runs 3] [--calib-windows 16] [--catalogue-only]

Writes bench/results/trust.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from common import RESULTS, ROOT, write_result

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def lowbit(*args: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "lowbit", *args], cwd=cwd, env=ENV,
                         capture_output=True, text=True)  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"lowbit {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - t0


def determinism(runs: int, calib_windows: int, root: Path) -> dict:
    rows = []
    for i in range(runs):  # the very same commands, each run in a folder of its own
        q, work = "gptq", root / f"run-{i}"
        work.mkdir()
        q_s = lowbit("quantize", "smollm2-135m", "-o", q, "--algorithm", "gptq", "--bits", "4",
                     "--group-size", "64", "--calib-windows", str(calib_windows), "--ctx", "256",
                     "--calib-text", "builtin:python-docs", cwd=work)  # fmt: skip
        e_s = lowbit("eval", q, "--eval-text", "builtin:python-docs", "--windows", "4", "--ctx",
                     "256", "-o", f"{q}.eval.json", cwd=work)  # fmt: skip
        quant = json.loads((work / f"{q}.result.json").read_text())
        ev = json.loads((work / f"{q}.eval.json").read_text())
        rows.append({
            "run": i,
            "tensors_sha256": quant["content_sha256"]["tensors"],
            "quantize_figures_sha256": quant["content_sha256"]["figures"],
            "eval_figures_sha256": ev["content_sha256"]["figures"],
            "bits_per_weight_linear": quant["result"]["bits_per_weight_linear"],
            "perplexity": ev["results"]["model"]["perplexity"],
            "kl_mean": ev["results"]["model"]["kl"]["mean"],
            "quantize_s": round(q_s, 1),
            "eval_s": round(e_s, 1),
        })  # fmt: skip
        print(rows[-1], flush=True)
    keys = ("tensors_sha256", "quantize_figures_sha256", "eval_figures_sha256", "perplexity")
    return {
        "setup": f"GPTQ W4 g64 sym on smollm2-135m, {calib_windows} calibration windows × 256 "
        "tokens of builtin:python-docs (seed 0); eval on 4 windows × 256 of its eval part",
        "runs": rows,
        "identical": {k: len({r[k] for r in rows}) == 1 for k in keys},
    }


def catalogue() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        test = ["tests/cli/test_bad_inputs.py", "-k", "test_bad_input", f"--junitxml={xml}"]
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *test],
                       cwd=ROOT, env=ENV, capture_output=True)  # fmt: skip
        seconds = time.perf_counter() - t0
        cases = [c for c in ET.parse(xml).getroot().iter("testcase")
                 if str(c.get("name")).startswith("test_bad_input[")]  # fmt: skip
        failed = [c.get("name") for c in cases if c.find("failure") is not None
                  or c.find("error") is not None]  # fmt: skip
    return {"tried": len(cases), "pass_all_four": len(cases) - len(failed), "failed": failed,
            "seconds": round(seconds, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calib-windows", type=int, default=16)
    keep = "Recount the catalogue; keep the determinism runs of trust.json."
    parser.add_argument("--catalogue-only", action="store_true", help=keep)
    args = parser.parse_args()
    if args.catalogue_only:
        det = json.loads((RESULTS / "trust.json").read_text())["determinism"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            det = determinism(args.runs, args.calib_windows, Path(tmp))
    cat = catalogue()
    print(json.dumps({"identical": det["identical"], "catalogue": cat}, indent=1))
    write_result(RESULTS / "trust.json", {"determinism": det, "bad_inputs": cat})


if __name__ == "__main__":
    main()
