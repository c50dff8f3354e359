"""``lowbit export``: write a quantized model as compressed-tensors (vLLM) or GGUF (llama.cpp)."""

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
    ComputeDtype,
    Ctx,
    Device,
    MaxMemory,
    OffloadOption,
    Overwrite,
    Seed,
    runtime_config,
)


class Target(str, Enum):
    compressed_tensors = "compressed-tensors"
    gguf = "gguf"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


def export(
    source: Annotated[
        str,
        typer.Argument(
            help="A directory saved by `lowbit quantize`, or a model source with --plan."
        ),
    ],
    to: Annotated[Target, typer.Option("--to", help="Layout to write.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory (compressed-tensors) or .gguf file.")
    ],
    plan: Annotated[
        Path | None, typer.Option(help="Quantize SOURCE with this plan first (JSON/YAML).")
    ] = None,
    dtype: Annotated[
        DType,
        typer.Option(help="Storage of the tensors kept in full precision (float32: as evaluated)."),
    ] = DType.float32,
    allow_unfused: Annotated[
        bool,
        typer.Option(
            "--allow-unfused",
            help="Export even if q/k/v or gate/up differ in scheme (vLLM will refuse it).",
        ),
    ] = False,
    eval_result: Annotated[
        Path | None,
        typer.Option(help="A `lowbit eval` result whose figures go into the model card."),
    ] = None,
    calib_text: CalibText = None,
    calib_windows: CalibWindows = 128,
    ctx: Ctx = 512,
    seed: Seed = 0,
    bos: Bos = "auto",
    device: Device = "auto",
    compute_dtype: ComputeDtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Export a quantized model with exactly the weights lowbit evaluated.

    Example: lowbit export smol-w4g32 --to gguf -o smol-q4_0.gguf
    """
    from lowbit import api
    from lowbit.api import Plan
    from lowbit.workflows import export_job
    from lowbit.workflows.spine import Execution

    export_job(
        source,
        to.value,
        output,
        plan=Plan.load(plan) if plan else None,
        calib=api.TextConfig(calib_text, ctx, calib_windows, seed, bos),
        dtype=dtype.value,
        allow_unfused=allow_unfused,
        eval_result=eval_result,
        execution=Execution(runtime_config(device, compute_dtype, offload, max_memory)),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
    )
