"""The GPU check, as one script: lowbit's execution core on a GPU against its CPU figures.

Steps (``--steps``, in the order given; each in its own try/except, under ``--budget-s``):

1. ``builtin``: the built-in model (SmolLM2-135M) GPTQ W4 g64, spine protocol (calibration
   128 × 512 of wiki.valid.tokens, evaluation WikiText-2 raw test 40 × 512), quantized and
   evaluated on the device in its dtype (bf16 on a GPU); KL within 5% of the CPU fp32 run's
   (``bench/gpu_steps/cpu_spine.json``, or ``--cpu-result``);
2. ``llama8b``: a random-weight model with the Llama-3.1-8B config (bf16, built on the device)
   quantized with GPTQ W4 g128 on 128 × 2048 random-token windows: wall time (target ≤ 240 s on
   one H200; llm-compressor publishes 745 s on one GPU) and peak GPU memory;
3. ``profile``: prefill and decode of the built-in model measured by ``lowbit profile`` against
   ``lowbit perf``'s predictions for this GPU (decode within ±10%).

``--tiny`` runs the same code on a tiny Llama (tests/helpers/tiny.py), tiny texts and a tiny
random Llama in well under a minute on a CPU (tests/bench/test_gpu_script.py); its CPU fp32
side of step 1 runs in the same process. The result (command, commit, machine, runtime, every
figure) is written atomically to ``OUT/gpu-result.json`` after every step, with a summary in
``OUT/gpu-summary.txt``. How to run it on the device machine: bench/gpu_run.sh.

    python bench/gpu.py --out bench/results/gpu                 # all steps, auto device
    python bench/gpu.py --tiny --device cpu --out /tmp/gpu-tiny  # the smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lowbit") is None:
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # bench.gpu_steps, tests.helpers (the tiny model)

from bench.gpu_steps import builtin, llama, moe, ranks, speed, tasks  # noqa: E402
from bench.gpu_steps.data import MANIFEST, stash_parts  # noqa: E402
from bench.gpu_steps.record import (  # noqa: E402
    Deadline,
    Recorder,
    commit,
    imports,
    machine,
    summary,
)

STEPS = ("builtin", "llama8b", "ranks", "tasks", "profile", "moe")
NEEDS_S = {
    "builtin": 60.0,
    "llama8b": 120.0,
    "ranks": 45.0,
    "tasks": 60.0,
    "profile": 30.0,
    "moe": 90.0,
}  # skipped with less budget left
TASK_PHASE_S = {"loglikelihood": 40.0, "gsm8k": 60.0, "mmlu": 40.0}  # each skipped below this


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="Tiny models and texts (a CPU test).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16.")
    p.add_argument("--out", type=Path, required=True, help="Directory for the result files.")
    p.add_argument("--steps", default=",".join(STEPS), help="Comma-separated, run in order.")
    p.add_argument("--budget-s", type=float, default=420.0, help="Global time budget.")
    p.add_argument("--gpu-data", type=Path, default=ROOT / "bench" / "gpu_data",
                   help="Carried data (bench/gpu_prepare.py): texts and GGUF halves.")  # fmt: skip
    p.add_argument("--data", type=Path, default=None,
                   help="Data directory with wikitext-2/wiki.valid.tokens and "
                   "wikitext-2-raw/wiki.test.raw (default: GPU_DATA/common, else "
                   "$LOWBIT_DATA_DIR or ../shared/data).")  # fmt: skip
    p.add_argument("--builtin", default=None,
                   help="The step-1 model source (default: smollm2-135m, joined from the "
                   "carried GGUF halves when present).")  # fmt: skip
    p.add_argument("--cpu-result", type=Path, default=builtin.CPU_RESULT,
                   help="The CPU fp32 figures of step 1 (ignored with --tiny).")  # fmt: skip
    p.add_argument("--llama-config", type=Path, default=ROOT / "bench/configs/llama-3.1-8b.json")
    p.add_argument("--llama-windows", type=int, default=128, help="Calibration windows.")
    p.add_argument("--hw", default="auto", help="Datasheet entry for step 3 (auto: by name).")
    p.add_argument("--work", type=Path, default=None, help="Scratch space (default: a tmp dir).")
    p.add_argument("--stash", type=Path, default=Path(tempfile.gettempdir()) / "lowbit-gpu-stash")
    args = p.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    return args


class Context:
    """What the steps share: the runtime request, directories and the step-1 model."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from lowbit.runtime import RuntimeConfig

        self.args, self.work = args, work
        self.rt_cfg = RuntimeConfig(args.device, args.dtype)
        self._model: str | None = None
        self.quantized: str | None = None  # the ranks step's plain GPTQ directory
        self.save: Callable[[], None] = lambda: None
        if args.tiny:
            from bench.gpu_steps.data import tiny_data

            self.data = tiny_data(work / "data")
        elif args.data is not None:
            self.data = args.data
        elif (args.gpu_data / "common" / builtin.CALIB_TEXT).is_file():
            self.data = args.gpu_data / "common"
        else:
            from lowbit.evaluation.text import data_dir

            self.data = data_dir()

    def builtin_model(self) -> str:
        """The step-1 model source (raises when the built-in model cannot be had here)."""
        if self._model is None:
            self._model = self._resolve_builtin()
        return self._model

    def _resolve_builtin(self) -> str:
        args = self.args
        if args.builtin is not None:
            return args.builtin
        if args.tiny:
            from tests.helpers.tiny import make_tiny_model

            return str(make_tiny_model(self.work / "tiny-models", "llama"))
        from bench.gpu_steps.data import PACKAGE, join_builtin

        installed = importlib.util.find_spec(PACKAGE) is not None
        if not installed and (args.gpu_data / MANIFEST).is_file():  # the device: no package
            join_builtin(args.gpu_data, args.stash)
        from lowbit.models.builtin import builtin_gguf

        builtin_gguf("smollm2-135m")  # a clear error when the package (or the join) is missing
        return "smollm2-135m"


def step_builtin(ctx: Context, figures: dict) -> None:
    args = ctx.args
    protocol = builtin.TINY_PROTOCOL if args.tiny else builtin.BuiltinProtocol()
    cpu = None if args.tiny else args.cpu_result
    figures["data"] = str(ctx.data)
    builtin.run_builtin(
        figures, ctx.builtin_model(), ctx.data, ctx.rt_cfg, protocol, ctx.work, cpu_result=cpu
    )


def step_llama(ctx: Context, figures: dict, deadline: Deadline) -> None:
    args = ctx.args
    if args.tiny:
        protocol = llama.LlamaProtocol(args.llama_config, windows=4, ctx=64)
        config = llama.TINY_CONFIG
    else:
        protocol = llama.LlamaProtocol(args.llama_config, windows=args.llama_windows)
        config = None
    llama.run_llama(figures, protocol, ctx.rt_cfg, ctx.work, deadline, config=config)


def step_ranks(ctx: Context, figures: dict) -> None:
    """torchrun with one rank against the plain process (issue 17)."""
    from bench.gpu_steps.data import PACKAGE

    protocol = ranks.TINY_PROTOCOL if ctx.args.tiny else ranks.RanksProtocol()
    device = str(api_runtime(ctx).device)
    model = ctx.builtin_model()
    extra = [str(ctx.args.stash / "pkg")] if (ctx.args.stash / "pkg" / PACKAGE).is_dir() else []
    ranks.run_ranks(figures, model, ctx.data, device, protocol, ctx.work / "ranks",
                    extra_paths=extra)  # fmt: skip
    ctx.quantized = figures["plain_dir"]


def step_tasks(ctx: Context, figures: dict, deadline: Deadline) -> None:
    """The task suite, reference against GPTQ W4 g64 (issue 19)."""
    protocol = tasks.TINY_PROTOCOL if ctx.args.tiny else tasks.TasksProtocol()
    model = ctx.builtin_model()
    if ctx.quantized is None:  # the ranks step did not run: quantize here
        step_ranks(ctx, {})
    from lowbit.evaluation.text import data_dir

    figures["data_dir"] = str(data_dir())  # the task files ($LOWBIT_DATA_DIR)
    tasks.run_tasks(figures, model, ctx.quantized, ctx.rt_cfg, protocol, deadline,
                    needs_s={} if ctx.args.tiny else TASK_PHASE_S, save=ctx.save)  # fmt: skip


def api_runtime(ctx: Context):
    from lowbit import api

    return api.runtime(ctx.rt_cfg)


def step_profile(ctx: Context, figures: dict) -> None:
    from lowbit import api

    args = ctx.args
    rt = api.runtime(ctx.rt_cfg)
    try:
        model = ctx.builtin_model()
    except Exception as exc:  # no built-in model here: random weights of its shape
        figures["builtin_unavailable"] = f"{type(exc).__name__}: {exc}"
        config = ROOT / "bench" / "configs" / "smollm2-135m.json"
        model = speed.random_twin(config, ctx.work / "smollm2-random", rt)
    hw = speed.datasheet_key(rt.describe()["device_name"]) if args.hw == "auto" else args.hw
    probes = None
    if args.tiny:
        from lowbit.perf.measure import QUICK_PROBES

        probes = QUICK_PROBES
    protocol = speed.TINY_PROTOCOL if args.tiny else speed.ProfileProtocol()
    speed.run_profile(
        figures, model, ctx.rt_cfg, protocol, ctx.work, hw_key=hw, probes=probes,
        out_dir=args.out,
    )  # fmt: skip


def step_moe(ctx: Context, figures: dict, deadline: Deadline) -> None:
    config = ROOT / "bench" / "configs" / "qwen3-30b-a3b.json"
    if ctx.args.tiny:
        protocol = moe.MoEProtocol(config, layers=2, windows=4, ctx=64)
        moe.run_moe(figures, protocol, ctx.rt_cfg, ctx.work, deadline, config=moe.TINY_CONFIG)
    else:
        moe.run_moe(figures, moe.MoEProtocol(config), ctx.rt_cfg, ctx.work, deadline)


LINES = {
    "builtin": builtin.lines,
    "llama8b": llama.lines,
    "ranks": ranks.lines,
    "tasks": tasks.lines,
    "profile": speed.lines,
    "moe": moe.lines,
}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    deadline = Deadline(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    from lowbit import api

    with tempfile.TemporaryDirectory(prefix="lowbit-gpu-", dir=args.work) as tmp:
        ctx = Context(args, Path(tmp))
        parts = None
        if not args.tiny and (args.gpu_data / MANIFEST).is_file():  # keep each carried half
            parts = stash_parts(args.gpu_data, args.stash)
        header = {
            "command": [sys.executable, *sys.argv],
            "commit": commit(ROOT, args.gpu_data / "common" / "commit.txt"),
            "created_unix": time.time(),
            "mode": "tiny" if args.tiny else "full",
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "runtime": api.runtime(ctx.rt_cfg).describe(),
            "machine": machine(),
            "gguf_parts_stashed": parts,
        }
        rec = Recorder(args.out / "gpu-result.json", header, deadline)
        ctx.save = rec.write  # a long step's figures so far (kept if the call is cut short)
        steps = {
            "builtin": lambda f: step_builtin(ctx, f),
            "llama8b": lambda f: step_llama(ctx, f, deadline),
            "ranks": lambda f: step_ranks(ctx, f),
            "tasks": lambda f: step_tasks(ctx, f, deadline),
            "profile": lambda f: step_profile(ctx, f),
            "moe": lambda f: step_moe(ctx, f, deadline),
        }
        for name in args.steps:
            rec.run(name, steps[name], needs_s=0.0 if args.tiny else NEEDS_S[name])
        if not args.tiny:  # after the steps: not counted in their budget (about 10 s)
            rec.data["compressed_tensors_imports"] = imports("compressed_tensors")
            rec.write()
    text = summary(rec.data, lambda name, figures: LINES[name](figures))
    (args.out / "gpu-summary.txt").write_text(text + "\n")
    print("\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
