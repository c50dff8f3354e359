"""``lowbit quantize``: quantize a model and save it (lowbit's own safetensors layout)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import (
    AllowPickle,
    Bos,
    CalibText,
    CalibWindows,
    ChunkSize,
    Ctx,
    Device,
    Dtype,
    MaxMemory,
    Model,
    OffloadOption,
    Overwrite,
    Seed,
    runtime_config,
)
from lowbit.models.pipeline import ExpertCalibration, Propagation


class ExpertPolicy(str, Enum):
    all = "all"
    routed = "routed"


class Granularity(str, Enum):
    group = "group"
    channel = "channel"
    tensor = "tensor"


def quantize(
    model: Model,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to create.")],
    bits: Annotated[int, typer.Option(help="Bits per code, 2 to 8.")] = 4,
    granularity: Annotated[
        Granularity, typer.Option(help="One scale per group of columns, channel, or tensor.")
    ] = Granularity.group,
    group_size: Annotated[int, typer.Option(help="Columns per group (any positive size).")] = 64,
    symmetric: Annotated[bool, typer.Option("--symmetric/--asymmetric")] = True,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="Weight format (`lowbit ls formats`): int (with --bits, --symmetric), nf4, "
            "fp4_e2m1, fp8_e4m3, mxfp4 (group 32), nvfp4 (group 16), lut (with --bits), ...",
        ),
    ] = "int",
    clipping: Annotated[
        str, typer.Option(help="RTN range: minmax, mse, or percentile[:P].")
    ] = "minmax",
    algorithm: Annotated[
        str, typer.Option(help="rtn, gptq, awq or squeezellm (`lowbit ls algorithms`).")
    ] = "gptq",
    act_order: Annotated[
        str, typer.Option(help="GPTQ order: off, static, group, group_aware.")
    ] = "static",
    damp: Annotated[float, typer.Option(help="GPTQ dampening (relative).")] = 0.01,
    plan: Annotated[
        Path | None, typer.Option(help="A plan file (JSON/YAML); overrides the options above.")
    ] = None,
    propagation: Annotated[
        Propagation,
        typer.Option(help="true-sequential: one pass, fastest; two-pass: least memory."),
    ] = Propagation.TRUE_SEQUENTIAL,
    calib_text: CalibText = None,
    calib_windows: CalibWindows = 128,
    ctx: Ctx = 512,
    seed: Seed = 0,
    bos: Bos = "auto",
    device: Device = "auto",
    dtype: Dtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    chunk_size: ChunkSize = 4,
    expert_calibration: Annotated[
        ExpertPolicy,
        typer.Option(
            help="Mixtures of experts: all = every calibration token through every expert for "
            "the Hessians; routed = the routed tokens (every token for an expert with fewer "
            "than --expert-min-tokens in a chunk)."
        ),
    ] = ExpertPolicy.all,
    expert_min_tokens: Annotated[
        int, typer.Option(help="With --expert-calibration routed: the fallback threshold.")
    ] = 16,
    overwrite: Overwrite = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue an interrupted run from OUTPUT.partial (same options): finished "
            "blocks are verified by sha256 and kept."
        ),
    ] = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Quantize MODEL and save codes, scales, zero points and the plan to OUTPUT.

    Example: lowbit quantize smollm2-135m -o smol-w4 --bits 4 --group-size 64
    """
    from lowbit import api
    from lowbit.api import Plan
    from lowbit.workflows import quantize_job
    from lowbit.workflows.spine import Execution

    the_plan = (
        Plan.load(plan)
        if plan
        else api.plan_from_options(
            api.spec_from_options(
                bits,
                group_size,
                symmetric,
                algorithm,
                act_order,
                damp,
                granularity=granularity.value,
                fmt=fmt,
                clipping=clipping,
            )
        )
    )
    quantize_job(
        model,
        the_plan,
        api.TextConfig(calib_text, ctx, calib_windows, seed, bos),
        output,
        execution=Execution(
            runtime_config(device, dtype, offload, max_memory),
            chunk_size,
            propagation.value,
            experts=ExpertCalibration(expert_calibration.value, expert_min_tokens),
        ),
        overwrite=overwrite,
        resume=resume,
        allow_pickle=allow_pickle,
    )
