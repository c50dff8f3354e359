"""Bigger than memory: a random-weight Llama-family model of ≥ 1.5 B parameters (bf16
safetensors shards, ≥ 3 GB on disk, ≥ 6 GB in fp32) is quantized with GPTQ W4 g128 (16 × 512
calibration windows of wiki.valid.tokens) and then evaluated (perplexity and KL against the
original, 4 × 512 windows of wiki.test.raw) inside a hard memory cap of 2 GB: a cgroup v1
memory group (``/sys/fs/cgroup/memory/lowbit-bench``, memory.limit_in_bytes and, when present,
memory.memsw.limit_in_bytes = the cap), which kills anything above it.

Steps:
(1) the model is built shard by shard outside the cap (``bench/random_model.py``; reused when
    ``--model-dir`` already holds one);
(2) ``lowbit quantize`` and (3) ``lowbit eval``, each as its own process put into the group
    before it execs (``sh -c 'echo $$ > .../cgroup.procs && exec python -m lowbit.cli.main
    ...'``); the group's counters are reset and its page cache dropped before each.
Recorded for each: exit code, wall seconds, the process's peak RSS (its result file's
``peak_rss_bytes``, its own VmHWM, and, even when it is killed, its ``ru_maxrss`` from wait4,
which Linux takes at least as large as this parent's RSS when the child forked), the group's
memory.max_usage_in_bytes (page cache included), memory.failcnt, OOM kills, the largest
anonymous (rss) usage of the group sampled every 0.2 s, and the figures (bits per weight,
perplexity, KL). Written to ``bench/results/bigger_than_memory.json`` (``--small``:
``bigger_than_memory-small.json``) with the command, the commit and the machine.

    python bench/bigger_than_memory.py --keep          # full; the model stays for a rerun
    python bench/bigger_than_memory.py --model-dir DIR # reuse (or build once in) DIR
    python bench/bigger_than_memory.py --small         # smoke test: ~107 M parameters, 768 MiB

Needs root and the cgroup v1 memory controller. Nothing else should run in the group.
Durations on the 2-core EPYC (the committed run, 2026-11-29): build 166 s; quantize 3032 s
(blocks took ≈ 60 s alone and ≈ 125 s while other jobs shared the cores; ≈ 30 min quiet);
evaluate 271 s (the reference cached, then the quantized model, each layer-wise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS, write_result
from random_model import FULL, SMALL, build, is_complete

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
LOWBIT = [sys.executable, "-m", "lowbit.cli.main"]
GiB = 2**30


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class Cgroup:
    """A cgroup v1 memory group with a hard limit (swap included when the kernel accounts it)."""

    def __init__(self, name: str, limit: int) -> None:
        if not (CGROUP_ROOT / "memory.limit_in_bytes").is_file():
            raise SystemExit(f"no cgroup v1 memory controller at {CGROUP_ROOT}")
        self.path = CGROUP_ROOT / name
        self.path.mkdir(exist_ok=True)
        if self.read("cgroup.procs"):
            raise SystemExit(f"{self.path} has processes in it; choose another --cgroup")
        self.memsw = (self.path / "memory.memsw.limit_in_bytes").is_file()
        try:  # the memory limit may not exceed memsw's: order the writes accordingly
            self.write("memory.limit_in_bytes", limit)
            if self.memsw:
                self.write("memory.memsw.limit_in_bytes", limit)
        except OSError:
            self.write("memory.memsw.limit_in_bytes", limit)
            self.write("memory.limit_in_bytes", limit)
        self.limit = int(self.read("memory.limit_in_bytes"))

    def read(self, name: str) -> str:
        return (self.path / name).read_text().strip()

    def write(self, name: str, value: int | str) -> None:
        (self.path / name).write_text(str(value))

    def reset(self) -> None:
        """Drop the group's page cache and zero its peak and failure counters."""
        self.write("memory.force_empty", 0)
        for name in ("memory.max_usage_in_bytes", "memory.failcnt"):
            self.write(name, 0)
        if self.memsw:
            self.write("memory.memsw.max_usage_in_bytes", 0)
            self.write("memory.memsw.failcnt", 0)

    def oom_kills(self) -> int:
        for line in self.read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def stat(self) -> dict[str, int]:
        pairs = (line.split() for line in self.read("memory.stat").splitlines())
        return {k: int(v) for k, v in pairs}

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError as exc:
            print(f"note: {self.path} was not removed ({exc})", file=sys.stderr)


class Sampler(threading.Thread):
    """The group's largest anonymous memory (rss) and usage, sampled while a run lasts, and a
    coarse timeline (seconds, rss MiB, usage MiB) every ``keep`` seconds."""

    def __init__(self, group: Cgroup, every: float = 0.2, keep: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.group, self.every, self.keep = group, every, keep
        self.stop = threading.Event()
        self.max_rss = self.max_usage = 0
        self.timeline: list[tuple[float, int, int]] = []

    def run(self) -> None:
        t0, last = time.perf_counter(), -self.keep
        while not self.stop.is_set():
            try:
                rss = self.group.stat()["total_rss"]
                usage = int(self.group.read("memory.usage_in_bytes"))
            except (OSError, KeyError, ValueError):
                rss = usage = 0
            self.max_rss, self.max_usage = max(self.max_rss, rss), max(self.max_usage, usage)
            now = time.perf_counter() - t0
            if now - last >= self.keep:
                self.timeline.append((round(now, 1), rss >> 20, usage >> 20))
                last = now
            self.stop.wait(self.every)


def run_capped(group: Cgroup, cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` inside ``group`` (the child joins it before it execs); its figures."""
    group.reset()
    oom_before = group.oom_kills()
    shell = f'echo $$ > {group.path / "cgroup.procs"} && exec "$@"'
    print("$", " ".join(cmd[2:]), f"  (in {group.path}, limit {group.limit / GiB:.2f} GiB)")
    sampler = Sampler(group)
    sampler.start()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(["sh", "-c", shell, "sh", *cmd], stdout=out, stderr=out)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    sampler.join()
    result = {
        "command": cmd[2:],
        "exit_code": child.returncode,
        "killed_by_signal": -child.returncode if child.returncode < 0 else None,
        "wall_s": wall,
        "process_max_rss_bytes": usage.ru_maxrss * 1024,
        "cgroup_max_usage_bytes": int(group.read("memory.max_usage_in_bytes")),
        "cgroup_failcnt": int(group.read("memory.failcnt")),
        "cgroup_oom_kills": group.oom_kills() - oom_before,
        "cgroup_max_rss_sampled_bytes": sampler.max_rss,
        "cgroup_max_usage_sampled_bytes": sampler.max_usage,
        "log": str(log),
        "timeline_s_rss_usage_mib": sampler.timeline,
    }
    if group.memsw:
        result["cgroup_memsw_max_usage_bytes"] = int(group.read("memory.memsw.max_usage_in_bytes"))
    if child.returncode != 0:
        result["log_tail"] = log.read_text()[-3000:]
    brief = ("log_tail", "timeline_s_rss_usage_mib", "command")
    print(json.dumps({k: v for k, v in result.items() if k not in brief}, indent=1))
    return result


def remove_output(out: Path) -> None:
    """A saved directory and what a killed run leaves of one (``.NAME.*.partial``)."""
    for path in (out, *out.parent.glob(f".{out.name}.*.partial")):
        shutil.rmtree(path, ignore_errors=True)


def quantize(group: Cgroup, model: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    remove_output(out)
    result_path = Path(f"{out}.result.json")
    result_path.unlink(missing_ok=True)
    cmd = [
        *LOWBIT, "quantize", str(model), "-o", str(out), "--algorithm", "gptq", "--bits", "4",
        "--group-size", "128", "--calib-text", str(args.calib_text), "--calib-windows",
        str(args.calib_windows), "--ctx", str(args.ctx),
    ]  # fmt: skip
    run = run_capped(group, cmd, out.parent / "quantize.log")
    if result_path.is_file():
        saved = json.loads(result_path.read_text())
        res = saved["result"]
        run["peak_rss_bytes"] = saved["peak_rss_bytes"]
        run["runtime"] = saved.get("runtime")
        run["figures"] = {
            k: res[k]
            for k in ("bits_per_weight_linear", "bits_per_weight_model", "size_bytes")
            if k in res
        } | {"quantize_s": res.get("quantize_s"), "timings_s": saved.get("timings_s")}
        run["execution"] = res.get("execution")
    return run


def evaluate(group: Cgroup, quantized: Path, work: Path, args: argparse.Namespace) -> dict:
    result_path = work / "eval.json"
    cache = work / "reference.lbref"  # computed inside the cap, as part of the evaluation
    for path in (result_path, cache):
        path.unlink(missing_ok=True)
    cmd = [
        *LOWBIT, "eval", str(quantized), "--eval-text", str(args.eval_text), "--windows",
        str(args.eval_windows), "--ctx", str(args.ctx), "--reference-cache", str(cache),
        "-o", str(result_path),
    ]  # fmt: skip
    run = run_capped(group, cmd, work / "eval.log")
    if result_path.is_file():
        saved = json.loads(result_path.read_text())
        ref, model = saved["results"]["reference"], saved["results"]["model"]
        run["peak_rss_bytes"] = saved["peak_rss_bytes"]
        run["runtime"] = saved.get("runtime")
        run["figures"] = {
            "perplexity": model["perplexity"],
            "reference_perplexity": ref["perplexity"],
            "kl_mean": model["kl"]["mean"],
            "top1_agreement": model["top1_agreement"],
            "tokens": model["tokens"],
            "reference_s": ref["seconds"],
            "model_s": model["wall_seconds"],
        }
    return run


def prepare_model(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """The model directory (built unless it already holds a model) and what it is."""
    shape = SMALL if args.small else FULL
    model = args.model_dir or work / f"model-{'small' if args.small else 'full'}"
    if is_complete(model):
        print(f"reusing the model in {model}")
        return model, describe(model)
    print(f"building a {shape.parameters() / 1e9:.3f} B-parameter model in {model} ...")
    info = build(shape, model, args.calib_text, args.seed)
    (model / "build.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "activation_check"}, indent=1))
    return model, info


def describe(model: Path) -> dict[str, Any]:
    """What an existing model directory holds (its build record when it has one)."""
    if (model / "build.json").is_file():
        return {**json.loads((model / "build.json").read_text()), "reused": True}
    index = json.loads((model / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    stored = int(index["metadata"]["total_size"])  # bf16: 2 bytes per parameter
    return {
        "dir": str(model),
        "parameters": stored // 2,
        "shards": files,
        "disk_bytes": sum((model / f).stat().st_size for f in files),
        "fp32_bytes": 2 * stored,
        "reused": True,
    }


def targets(info: dict[str, Any], runs: dict[str, Any], small: bool) -> dict[str, Any]:
    """The issue's conditions, each true or false (the small smoke test checks the runs only)."""
    met = {f"{name} finished": run.get("exit_code") == 0 for name, run in runs.items()}
    if not small:
        met["≥ 1.5 B parameters"] = info.get("parameters", 0) >= 1.5e9
        met["≥ 3 GB on disk"] = info.get("disk_bytes", 0) >= 3e9
        met["≥ 6 GB in fp32"] = info.get("fp32_bytes", 0) >= 6e9
    return met


def parse_args() -> argparse.Namespace:
    from lowbit.evaluation.text import data_dir

    data = data_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="~107 M parameters, cap 768 MiB")
    p.add_argument("--cap", default=None, help="memory cap, e.g. 2G (default 2G; --small 768M)")
    p.add_argument("--model-dir", type=Path, default=None, help="model to reuse, or build in")
    p.add_argument("--work-dir", type=Path, default=RESULTS / "bigger_than_memory")
    p.add_argument("--keep", action="store_true", help="keep the built and quantized models")
    p.add_argument("--build-only", action="store_true", help="build the model and stop")
    p.add_argument("--cgroup", default="lowbit-bench", help="group name under " + str(CGROUP_ROOT))
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-text", type=Path, default=data / "wikitext-2" / "wiki.valid.tokens")
    p.add_argument("--eval-text", type=Path, default=data / "wikitext-2-raw" / "wiki.test.raw")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    cap = parse_size(args.cap or ("768M" if args.small else "2G"))
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    built_here = not (args.model_dir and is_complete(args.model_dir))
    model, info = prepare_model(args, work)
    if args.build_only:
        return
    group = Cgroup(args.cgroup, cap)
    quantized = work / f"quantized-{'small' if args.small else 'full'}"
    runs: dict[str, Any] = {}
    try:
        runs["quantize"] = quantize(group, model, quantized, args)
        if runs["quantize"]["exit_code"] == 0:
            runs["eval"] = evaluate(group, quantized, work, args)
    finally:
        group.remove()
    record = {
        "protocol": {
            "scale": "small" if args.small else "full",
            "cap_bytes": cap,
            "cgroup": {"path": str(group.path), "limit_bytes": group.limit, "memsw": group.memsw},
            "scheme": "GPTQ W4 group 128 symmetric",
            "calib": {"text": str(args.calib_text), "windows": args.calib_windows},
            "eval": {"text": str(args.eval_text), "windows": args.eval_windows},
            "ctx": args.ctx,
        },
        "model": info,
        **runs,
        "met": targets(info, runs, args.small),
    }
    name = "bigger_than_memory-small.json" if args.small else "bigger_than_memory.json"
    write_result(RESULTS / name, record)
    print(json.dumps(record["met"], indent=1), f"\nwritten {RESULTS / name}")
    if not args.keep:
        remove_output(quantized)
        if built_here and args.model_dir is None:
            shutil.rmtree(model, ignore_errors=True)


if __name__ == "__main__":
    main()
