"""Beyond one machine (issue 17), on this machine's CPUs:

- ``ranks``: GPTQ W4 g64 of the built-in model by 2 gloo ranks (torchrun) against one process:
  the share of identical codes, the largest scale difference, KL of each to the original, the
  wall time of both and the all-reduce / broadcast share of the 2-rank run;
- ``ray``: 12 RTN trials (4 formats × 3 group sizes) of the built-in model (2 evaluation
  windows × 256 tokens): one process (``--local``) and a local Ray with one worker (with two:
  ``--two-workers``, always with ``--tiny``); wall time of each, the time outside the trials,
  Ray's fixed costs, results equal;
- ``crash``: the same sweep on Ray (2 workers) killed with SIGKILL at random moments (the driver,
  or a worker then the driver), each followed by ``--resume``; the final store against the
  uninterrupted one, trial by trial.

    nice python bench/scale.py ranks|ray|crash      # writes bench/results/scale_PART.json
    nice python bench/scale.py ray --two-workers    # the built-in sweep on 2 workers too
    nice python bench/scale.py ray|crash --tiny     # the tiny test model: scale_PART_tiny.json
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # this checkout's lowbit, as the subprocesses use

from bench.common import RESULTS, write_result  # noqa: E402

PY = sys.executable
MODEL = "smollm2-135m"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
       "RAY_AUTH_MODE": "disabled"}  # fmt: skip


def _run(cmd: list[str], **kw: Any) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, **kw)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - t0


def ranks(work: Path, calib_windows: int = 16, eval_windows: int = 10) -> dict[str, Any]:
    from safetensors.torch import load_file

    q = ["quantize", MODEL, "--bits", "4", "--group-size", "64", "--algorithm", "gptq",
         "--calib-windows", str(calib_windows), "--device", "cpu"]  # fmt: skip
    single_s = _run([PY, "-m", "lowbit", *q, "-o", str(work / "one")])
    torchrun = str(Path(PY).with_name("torchrun"))
    ranks_s = _run([torchrun, "--nproc-per-node", "2", "-m", "lowbit", *q, "-o", str(work / "two")])
    same = total = 0
    scale_diff = 0.0
    by_block = {}
    for shard in sorted((work / "one").glob("blocks-*.safetensors")):
        a, b = load_file(str(shard)), load_file(str(work / "two" / shard.name))
        block_same = block_total = 0
        for k in a:
            if a[k].dtype.is_floating_point:
                scale_diff = max(scale_diff, float((a[k].float() - b[k].float()).abs().max()))
            else:
                block_same += int((a[k] == b[k]).sum())
                block_total += a[k].numel()
        by_block[shard.stem] = block_same / block_total
        same, total = same + block_same, total + block_total
    kl = {}
    for name in ("one", "two"):
        out = work / f"{name}.eval.json"
        _run([PY, "-m", "lowbit", "eval", str(work / name), "--windows", str(eval_windows),
              "--device", "cpu", "-o", str(out)])  # fmt: skip
        kl[name] = json.loads(out.read_text())["results"]["model"]["kl"]["mean"]
    manifest = json.loads((work / "two" / "lowbit.json").read_text())
    timings = _find(manifest, "all_reduce_s")
    return {
        "setup": f"GPTQ W4 g64 sym, {calib_windows} calibration windows × 512 tokens, CPU fp32, "
        "OMP_NUM_THREADS=1 per process; KL on the first "
        f"{eval_windows} evaluation windows of builtin:python-docs",
        "packed_code_bytes_equal": same / total, "packed_code_bytes": total,
        "packed_code_bytes_equal_by_block": by_block,
        "max_abs_scale_difference": scale_diff,
        "kl_one_process": kl["one"], "kl_two_ranks": kl["two"],
        "kl_relative_difference": abs(kl["two"] - kl["one"]) / kl["one"],
        "wall_s_one_process": single_s, "wall_s_two_ranks": ranks_s,
        "rank0_timings_s": {k: timings.get(k) for k in
                            ("quantize_s", "capture_s", "all_reduce_s", "broadcast_s")},
    }  # fmt: skip


def _find(d: Any, key: str) -> dict[str, Any]:
    """The first mapping inside ``d`` that has ``key``."""
    if isinstance(d, dict):
        if key in d:
            return d
        for v in d.values():
            if found := _find(v, key):
                return found
    return {}


SWEEP = """models: [{model}]
formats: {formats}
group_sizes: {groups}
texts: [{{source: builtin:python-docs, ctx: {ctx}, windows: {windows}}}]
runtime: {{device: cpu, dtype: float32}}
"""


def _sweep(work: Path, big: bool = False) -> Path:
    """The 12-trial sweep (4 formats × 3 group sizes) of the built-in model (ctx 512), or with
    ``--tiny`` of the tests' tiny Llama (ctx 32; groups of 8, 16, 32); ``big``: 24 trials."""
    if TINY:
        from tests.helpers.tiny import make_tiny_model

        model, ctx, groups = str(make_tiny_model(work / "tiny", "llama")), 32, [8, 16, 32]
    else:
        model, ctx, groups = MODEL, 256, [32, 64, 128]
    formats = "[int4, int3, int8, nf4]"
    if big:  # the crash test on the tiny model: 48 trials, so that kills land mid-sweep
        bits = [f"int{b}{a}" for b in (2, 3, 4, 5, 6, 8) for a in ("", "-asym")]
        formats, groups = f"[{', '.join(bits)}]", [4, *groups]
    path = work / "s.yaml"
    windows = 4 if TINY else 2
    path.write_text(SWEEP.format(model=model, ctx=ctx, formats=formats, groups=groups,
                                 windows=windows))  # fmt: skip
    warm = work / "warm.yaml"  # computes the reference cache once, before any timed run
    warm.write_text(SWEEP.format(model=model, ctx=ctx, formats="[int2]", groups=groups[:1],
                                 windows=windows))  # fmt: skip
    _run([PY, "-m", "lowbit", "sweep", str(warm), "--local"])
    return path


def _rows(store: Path) -> dict[str, Any]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT hash, name, config, status, metrics FROM trials").fetchall()
    return {r[0]: r[1:] for r in rows}


def ray(work: Path) -> dict[str, Any]:
    path = _sweep(work)
    base = [PY, "-m", "lowbit", "sweep", str(path)]
    runs = {"one_process": ["--local"], "ray_1_worker": ["--workers", "1"]}
    if TINY or "--two-workers" in sys.argv:
        runs["ray_2_workers"] = ["--workers", "2"]
    load = {"before": os.getloadavg()}
    walls = {n: _run([*base, *a, "--store", str(work / f"{n}.sqlite")]) for n, a in runs.items()}
    load["after"] = os.getloadavg()
    local = _rows(work / "one_process.sqlite")
    trial_s = {n: _trial_seconds(work / f"{n}.sqlite") for n in runs}
    one_at_a_time = [n for n in runs if n != "ray_2_workers"]  # trials in sequence
    return {
        "trials": len(local),
        "wall_s": walls,
        "ray_1_worker_over_one_process": walls["ray_1_worker"] / walls["one_process"],
        "over_one_process": {n: walls[n] / walls["one_process"] for n in runs},
        "sum_of_trial_seconds": trial_s,
        "outside_trials_s": {n: walls[n] - trial_s[n] for n in one_at_a_time},
        "ray_fixed_costs_s": _ray_profile(),
        "stores_equal_trial_by_trial": {n: _rows(work / f"{n}.sqlite") == local for n in runs},
        "load_average_1_5_15_min": load,
        "note": "each wall time is the whole `lowbit sweep` command (Python start, Ray start "
        "and shutdown included); every trial runs with the driver's torch thread count "
        "(OMP_NUM_THREADS=1 here), so 2 workers use both cores; the time outside the trials is "
        "given for the runs whose trials run one at a time",
    }


def _trial_seconds(store: Path) -> float:
    with sqlite3.connect(store) as db:
        return float(db.execute("SELECT SUM(seconds) FROM trials").fetchone()[0])


RAY_PROFILE = """
import json, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
t2 = time.perf_counter()

@ray.remote(num_cpus=1)
def trial_module():
    t = time.perf_counter()
    import lowbit.sweep.trial  # noqa: F401  (torch, transformers, lowbit)
    return time.perf_counter() - t

imports = ray.get(trial_module.remote())
t3 = time.perf_counter()
ray.get(trial_module.remote())
t4 = time.perf_counter()
ray.shutdown()
t5 = time.perf_counter()
print(json.dumps({"import_ray": t1 - t0, "ray_init": t2 - t1, "first_task": t3 - t2,
                  "of_which_worker_imports": imports, "next_task": t4 - t3,
                  "ray_shutdown": t5 - t4}))
"""


def _ray_profile() -> dict[str, float]:
    """Ray's fixed costs in a fresh process: import, ``ray.init()`` of a local Ray with one
    CPU, the first task (a worker started, lowbit's trial module imported in it), the next
    task on the same worker, shutdown."""
    run = subprocess.run([PY, "-c", RAY_PROFILE], env=ENV, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"Ray profile failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _workers(pid: int) -> list[int]:
    import psutil

    out = []
    for child in _descendants(pid):
        try:
            if "run_trial" in " ".join(psutil.Process(child).cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def crash(work: Path, kills: int = 10, seed: int = 0) -> dict[str, Any]:
    path = _sweep(work, big=TINY)
    clean, store = work / "clean.sqlite", work / "crashed.sqlite"
    base = [PY, "-m", "lowbit", "sweep", str(path), "--workers", "2"]
    clean_s = _run([*base, "--store", str(clean)])
    rng, log, done = random.Random(seed), [], 0
    t0 = time.perf_counter()
    while len(log) < kills:
        cmd = [*base, "--store", str(store)] + (["--resume"] if store.exists() else [])
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(5, 25))
        family = _descendants(proc.pid)
        workers = _workers(proc.pid)
        if workers and rng.random() < 0.5:
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            log.append({"killed": "worker", "at_s": time.perf_counter() - t0})
            time.sleep(rng.uniform(2, 10))
            family = _descendants(proc.pid) + family
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            log.append({"killed": "driver", "at_s": time.perf_counter() - t0})
        proc.wait()
        time.sleep(3)
        _kill_all(family)  # what Ray's local cluster leaves behind without its driver
        done = len([r for r in _rows(store).values() if r[2] == "done"]) if store.exists() else 0
        if log:
            log[-1]["done_after"] = done
        if store.exists() and _rows(store) and done == len(_rows(store)):
            break  # the sweep completed between two kills
    final_s = _run([*base, "--store", str(store), "--resume"])
    a, b = _rows(clean), _rows(store)
    return {
        "kills": log, "n_kills": len(log), "uninterrupted_s": clean_s, "final_resume_s": final_s,
        "trials": len(a), "stores_equal_trial_by_trial": a == b,
        "differing": [h for h in a if a[h] != b.get(h)],
    }  # fmt: skip


TINY = "--tiny" in sys.argv


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "ranks"
    parts = {"ranks": ranks, "ray": ray, "crash": crash}
    with tempfile.TemporaryDirectory(prefix="lowbit-scale-") as tmp:
        t0 = time.perf_counter()
        record = parts[part](Path(tmp))
        record["bench_wall_s"] = time.perf_counter() - t0
    record["model"] = "the tests' tiny random Llama (tests/helpers/tiny.py)" if TINY else MODEL
    out = write_result(RESULTS / f"scale_{part}{'_tiny' if TINY else ''}.json", record)
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
