"""``lowbit run``: the demo job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import (
    Bos,
    CalibText,
    CalibWindows,
    Ctx,
    Device,
    Dtype,
    EvalText,
    EvalWindows,
    MaxMemory,
    OffloadOption,
    Output,
    Overwrite,
    ReferenceCache,
    Seed,
    runtime_config,
)


def run(
    model: Annotated[
        str, typer.Argument(help="A model source (default: the built-in smollm2-135m).")
    ] = "smollm2-135m",
    eval_text: EvalText = None,
    calib_text: CalibText = None,
    ctx: Ctx = 512,
    windows: EvalWindows = 40,
    calib_windows: CalibWindows = 32,
    seed: Seed = 0,
    bos: Bos = "auto",
    device: Device = "auto",
    dtype: Dtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    reference_cache: ReferenceCache = None,
    output: Output = Path("lowbit-run.json"),
    overwrite: Overwrite = False,
) -> None:
    """Compare the original model with RTN W4, GPTQ W4 and GPTQ W3 (group 64, symmetric):
    bits per weight, size, perplexity, KL divergence, top-1 agreement, time.

    Example: lowbit run --eval-text ../shared/data/wikitext-2-raw/wiki.test.raw
    """
    from lowbit.api import TextConfig
    from lowbit.workflows import run_job
    from lowbit.workflows.spine import Execution

    run_job(
        model,
        TextConfig(eval_text, ctx, windows, seed, bos),
        TextConfig(calib_text, ctx, calib_windows, seed, bos),
        output,
        execution=Execution(
            runtime_config(device, dtype, offload, max_memory), reference_cache=reference_cache
        ),
        overwrite=overwrite,
    )
