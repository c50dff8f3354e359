"""``lowbit pareto``: quantize and measure plans over a sweep of budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli import sources
from lowbit.cli.menu import Algorithm, DeployTarget, Fuse, Metric, TablePath
from lowbit.cli.options import (
    Address,
    Bos,
    CalibText,
    Ctx,
    Device,
    Dtype,
    EvalText,
    MaxMemory,
    Model,
    OffloadOption,
    Overwrite,
    Seed,
    UseRay,
    Workers,
    ray_runner_of,
    runtime_config,
)


def pareto(
    model: Model,
    table: TablePath,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the sweep.")],
    budget: Annotated[
        list[float], typer.Option(help="Average bits per weight to plan for (repeat).")
    ] = [3.25, 3.5, 4.0, 4.5, 5.0],
    uniform_bits: Annotated[list[int], typer.Option(help="Uniform plans: bits (repeat).")] = [
        3,
        4,
    ],
    uniform_group: Annotated[
        list[int], typer.Option(help="Uniform plans: group sizes (repeat).")
    ] = [32, 64, 128],
    algorithm: Algorithm = "gptq",
    metric: Metric = "kl",
    fuse: Fuse = True,
    target: DeployTarget = "any",
    eval_text: EvalText = None,
    windows: Annotated[int, typer.Option("--windows", help="Evaluation windows.")] = 40,
    calib_text: CalibText = None,
    calib_windows: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    ctx: Ctx = 512,
    seed: Seed = 0,
    bos: Bos = "auto",
    device: Device = "auto",
    dtype: Dtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted sweep.")] = False,
    overwrite: Overwrite = False,
    sensitivity: sources.SensitivityOption = sources.Source.single_layer,
    rounds: sources.Rounds = 3,
    boundary: sources.Boundary = 16,
    probe_windows: sources.ProbeWindows = 2,
    probe_ctx: sources.ProbeCtx = 128,
    start: sources.StartPlan = "uniform",
    select_windows: sources.SelectWindows = 0,
    probe_held_out: sources.ProbeHeldOut = False,
    ray: UseRay = False,
    workers: Workers = 1,
    address: Address = None,
) -> None:
    """For each budget, the exact plan and the llama.cpp-style plan (in context also the
    iterated in-context plan and the greedy plan); plus uniform plans; each quantized and
    evaluated. Writes OUTPUT/pareto.json and OUTPUT/pareto.html.

    Example: lowbit pareto smollm2-135m --table sens.json -o sweep --budget 3.5 --budget 4
    """
    args = (sensitivity, rounds, boundary, probe_windows, probe_ctx, start, select_windows)
    # refused here, before the model loads
    source = sources.sensitivity_config(*args, probe_held_out)
    from lowbit import api
    from lowbit.workflows import pareto_job
    from lowbit.workflows.spine import Execution

    runner = ray_runner_of(ray, workers, address, output / "pareto.results.sqlite")
    uniform = [
        api.spec_from_options(b, g, True, algorithm) for b in uniform_bits for g in uniform_group
    ]
    pareto_job(
        model,
        table,
        budget,
        uniform,
        api.TextConfig(calib_text, ctx, calib_windows, seed, bos),
        api.TextConfig(eval_text, ctx, windows, bos=bos),
        output,
        metric=metric,
        fuse=fuse,
        resume=resume,
        execution=Execution(runtime_config(device, dtype, offload, max_memory)),
        overwrite=overwrite,
        target=target,
        sensitivity=source,
        runner=runner,
    )
