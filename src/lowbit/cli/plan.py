"""``lowbit plan``: the plan of least predicted loss within a budget."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli import sources
from lowbit.cli.menu import DeployTarget, Fuse, Metric, TablePath
from lowbit.cli.options import (
    Bos,
    CalibText,
    CalibWindows,
    Ctx,
    Device,
    Dtype,
    Model,
    Overwrite,
    Seed,
    runtime_config,
)


class Method(str, Enum):
    exact = "exact"
    greedy = "greedy"
    llamacpp = "llamacpp"


def plan(
    model: Model,
    table: TablePath,
    output: Annotated[Path, typer.Option("--output", "-o", help="Plan to write (.yaml/.json).")],
    avg_bits: Annotated[
        float | None, typer.Option(help="Average bits per weight over the linear layers.")
    ] = None,
    max_bytes: Annotated[
        str | None, typer.Option(help="Stored size of the whole model, e.g. 60MB.")
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            help="exact (integer program), greedy (ExLlamaV3-style) or llamacpp (heuristic mix)."
        ),
    ] = Method.exact,
    metric: Metric = "kl",
    fuse: Fuse = True,
    target: DeployTarget = "any",
    pin: Annotated[
        list[str], typer.Option(help="LAYER=SPEC: fix a layer (or re:pattern) to a menu spec.")
    ] = [],
    sensitivity: sources.SensitivityOption = sources.Source.single_layer,
    rounds: sources.Rounds = 3,
    boundary: sources.Boundary = 16,
    probe_windows: sources.ProbeWindows = 2,
    probe_ctx: sources.ProbeCtx = 128,
    start: sources.StartPlan = "uniform",
    select_windows: sources.SelectWindows = 0,
    probe_held_out: sources.ProbeHeldOut = False,
    calib_text: CalibText = None,
    calib_windows: CalibWindows = 128,
    ctx: Ctx = 512,
    seed: Seed = 0,
    bos: Bos = "auto",
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Choose one spec of the table's menu per layer, minimising the summed sensitivity.

    Example: lowbit plan smollm2-135m --table sens.json --avg-bits 3.25 -o plan.yaml

    In context (--sensitivity in-context) the losses are measured inside the quantized model
    on the table's calibration windows (give the same calibration options as the table), or
    with --probe-held-out on windows of the same text that overlap none of them.
    """
    args = (sensitivity, rounds, boundary, probe_windows, probe_ctx, start, select_windows)
    # refused here, before the model loads
    source = sources.sensitivity_config(*args, probe_held_out)
    from lowbit.api import AvgBits, MaxBytes, TextConfig
    from lowbit.cli.menu import parse_pins, parse_size
    from lowbit.errors import ConfigError
    from lowbit.workflows import plan_job
    from lowbit.workflows.incontext import check_method
    from lowbit.workflows.spine import Execution

    check_method(source, method.value)

    if (avg_bits is None) == (max_bytes is None):
        raise ConfigError("give exactly one budget: --avg-bits or --max-bytes")
    budget = AvgBits(avg_bits) if avg_bits is not None else MaxBytes(parse_size(max_bytes or ""))
    plan_job(
        model,
        table,
        budget,
        output,
        method=method.value,
        metric=metric,
        fuse=fuse,
        pins=parse_pins(pin),
        overwrite=overwrite,
        target=target,
        sensitivity=source,
        calib=TextConfig(calib_text, ctx, calib_windows, seed, bos),
        execution=Execution(runtime_config(device, dtype, "auto", None)),
    )
