"""``lowbit compare``: the quantized model against the reference, per sample and per token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import (
    AllowPickle,
    BatchSize,
    Bos,
    Ctx,
    Device,
    Dtype,
    EvalWindows,
    IncludePath,
    Limit,
    MaxGenToks,
    MaxMemory,
    OffloadOption,
    Overwrite,
    ReferenceCache,
    Tasks,
    TaskSourceOption,
    runtime_config,
    task_config,
)


def compare(
    reference: Annotated[
        str, typer.Argument(help="The reference: a model source, or a `lowbit eval --tasks` JSON.")
    ],
    quantized: Annotated[
        str,
        typer.Argument(
            help="The quantized model: a saved or exported directory, a GGUF file, any model "
            "source, or a `lowbit eval --tasks` JSON."
        ),
    ],
    tasks: Tasks = None,
    limit: Limit = None,
    task_source: TaskSourceOption = "auto",
    batch_size: BatchSize = 16,
    include_path: IncludePath = None,
    max_gen_toks: MaxGenToks = None,
    eval_text: Annotated[
        str | None,
        typer.Option(
            "--eval-text",
            help="Text for per-token KL statistics (a file, builtin:python-docs or "
            "NAME:CONFIG:SPLIT); none by default.",
        ),
    ] = None,
    ctx: Ctx = 512,
    bos: Bos = "auto",
    windows: EvalWindows = 40,
    device: Device = "auto",
    dtype: Dtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    reference_cache: ReferenceCache = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lowbit-compare.json"),
    report: Annotated[
        Path | None, typer.Option("--report", help="HTML report (default: OUTPUT with .html).")
    ] = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Compare QUANTIZED with REFERENCE: accuracy, flips, error overlap, FP/FN and McNemar per
    task, accuracy by category and flips by margin (--tasks), and per-token KL statistics
    (--eval-text); one JSON result and an HTML report.

    Example: lowbit compare smollm2-135m smol-w4 --tasks piqa,mmlu --limit 200
    --eval-text ../shared/data/wikitext-2-raw/wiki.test.raw
    """
    from lowbit.api import TextConfig
    from lowbit.workflows.spine import Execution
    from lowbit.workflows.tasks import compare_job

    task_cfg = task_config(tasks, limit, task_source, batch_size, include_path, max_gen_toks)
    text = TextConfig(eval_text, ctx, windows, bos=bos) if eval_text is not None else None
    compare_job(
        reference,
        quantized,
        task_cfg,
        text,
        output,
        report or output.with_suffix(".html"),
        execution=Execution(
            runtime_config(device, dtype, offload, max_memory), reference_cache=reference_cache
        ),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
    )
