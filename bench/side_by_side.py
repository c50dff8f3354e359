"""The same job run by a previous commit and by this one, alternately, on this machine: the
built-in model's GPTQ time (the spine protocol) and the demo (`lowbit run`): wall time, peak
RSS and every figure, with the differences.

    .venv/bin/python bench/side_by_side.py --base c3dc85e gptq --rounds 2
    .venv/bin/python bench/side_by_side.py --base c3dc85e demo

The previous commit is checked out into a temporary git worktree and run with this virtual
environment (its code on PYTHONPATH, so the libraries are the same). Each job runs in its own
process; peak RSS is that process's (``ru_maxrss`` of the child). ``gptq``: GPTQ W4 g64
symmetric on 128 × 512 windows of wiki.valid.tokens (the spine's calibration file, made with
bench/llmcompressor/make_test_inputs.py); codes and scales compared by hash. ``demo``:
`lowbit run` on the built-in text (the quick start's job) with an empty reference cache.
Writes bench/results/side_by_side-<job>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, write_result

CALIB = RESULTS / "calib.safetensors"


def worktree(commit: str, root: Path) -> Path:
    path = root / f"base-{commit[:10]}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-f", str(path), commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return path


_WRAP = (  # a fresh parent per job, so RUSAGE_CHILDREN's peak is this job's alone
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(code)"
)


def run(argv: list[str], src: Path, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Run ``argv`` with ``src`` (a tree's src/) first on PYTHONPATH; wall time and peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAP, *argv],
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": f"{src}:{ROOT / 'bench'}"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    peak = int(proc.stderr.strip().splitlines()[-1].split()[-1]) * 1024
    return {"wall_s": wall, "peak_rss_bytes": peak, "stdout": proc.stdout[-4000:]}


def packed_hashes(directory: Path) -> dict[str, str]:
    from safetensors import safe_open

    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
                if key.endswith((".qcodes", ".qscale", ".qzero", ".qperm")):
                    data = reader.get_tensor(key).contiguous().view(-1).numpy().tobytes()
                    out[key] = hashlib.sha256(data).hexdigest()
    return out


def gptq_round(tree: Path, out: Path) -> dict[str, object]:
    script = tree / "bench" / "spine_lowbit.py"
    argv = [sys.executable, str(script), "--calib", str(CALIB), "--out", str(out)]
    res = run(argv, tree / "src", tree, {})
    line = json.loads(res["stdout"].strip().splitlines()[-1])
    return {
        **res,
        "stdout": None,
        "quantize_wall_s": line["quantize_wall_s"],
        "quantize_peak_rss_bytes": line["peak_rss_bytes"],
        "hashes": packed_hashes(out),
    }


def demo_round(tree: Path, work: Path, cache: Path) -> dict[str, object]:
    result = work / "lowbit-run.json"
    argv = [sys.executable, "-m", "lowbit.cli.main", "run", "-o", str(result), "--overwrite"]
    res = run(argv, tree / "src", work, {"LOWBIT_CACHE": str(cache)})
    return {**res, "result": json.loads(result.read_text())}


def compare_demo(old: dict, new: dict) -> list[dict[str, object]]:
    rows = []
    for a, b in zip(old["result"]["rows"], new["result"]["rows"], strict=True):
        row = {"name": b["name"]}
        for key in ("perplexity", "kl_mean", "top1_agreement", "bits_per_weight_linear"):
            x, y = a.get(key), b.get(key)
            rel = None if x in (None, 0) or y is None else abs(y - x) / abs(x)
            row[key] = {"before": x, "after": y, "relative": rel}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", choices=["gptq", "demo"])
    ap.add_argument("--base", default="c3dc85e", help="the previous commit")
    ap.add_argument("--rounds", type=int, default=1, help="alternating before/after pairs")
    args = ap.parse_args()
    if args.job == "gptq" and not CALIB.is_file():
        raise SystemExit(
            f"{CALIB} is missing: make it with bench/llmcompressor/make_test_inputs.py"
        )
    with tempfile.TemporaryDirectory(prefix="lowbit-sbs-") as tmp:
        root = Path(tmp)
        trees = {"before": worktree(args.base, root), "after": ROOT}
        rounds = []
        try:
            for r in range(args.rounds):
                for side, tree in trees.items():
                    if args.job == "gptq":
                        res = gptq_round(tree, root / f"{side}-{r}")
                    else:
                        work = root / f"{side}-{r}"
                        work.mkdir()
                        res = demo_round(tree, work, root / f"cache-{side}-{r}")
                    rounds.append({"side": side, "round": r, **res})
                    print(side, r, f"{res['wall_s']:.1f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees["before"])],
                           cwd=ROOT, capture_output=True)  # fmt: skip
    summary = summarise(args.job, rounds)
    record = {"job": args.job, "base": args.base, "summary": summary, "rounds": rounds}
    write_result(RESULTS / f"side_by_side-{args.job}.json", record)
    print(json.dumps(summary, indent=1))


def summarise(job: str, rounds: list[dict]) -> dict[str, object]:
    side = {s: [r for r in rounds if r["side"] == s] for s in ("before", "after")}
    key = "quantize_wall_s" if job == "gptq" else "wall_s"
    out: dict[str, object] = {f"{s}_{key}": [r[key] for r in rs] for s, rs in side.items()}
    out["ratio_after_over_before"] = [
        a[key] / b[key] for a, b in zip(side["after"], side["before"], strict=True)
    ]
    out["peak_rss_bytes"] = {s: [r["peak_rss_bytes"] for r in rs] for s, rs in side.items()}
    if job == "gptq":
        out["codes_identical"] = all(
            a["hashes"] == b["hashes"] for a, b in zip(side["after"], side["before"], strict=True)
        )
    else:
        out["rows"] = compare_demo(side["before"][0], side["after"][0])
    return out


if __name__ == "__main__":
    main()
