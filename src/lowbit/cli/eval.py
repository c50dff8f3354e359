"""``lowbit eval``: perplexity, KL divergence and agreement against a reference, and accuracy
on tasks through the lm-evaluation-harness."""

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


def evaluate(
    model: Annotated[
        str, typer.Argument(help="A model source or a directory saved by `lowbit quantize`.")
    ],
    reference: Annotated[
        str | None,
        typer.Option(
            help="Reference model for KL divergence "
            "(default for a saved quantized model: the "
            "model it came from)."
        ),
    ] = None,
    eval_text: Annotated[
        str | None,
        typer.Option(
            "--eval-text",
            help="Evaluation text: a file, builtin:python-docs, or a hub dataset "
            "NAME:CONFIG:SPLIT. Default builtin:python-docs (stated in the output and the "
            "result), or none when --tasks is given.",
        ),
    ] = None,
    ctx: Ctx = 512,
    bos: Bos = "auto",
    windows: EvalWindows = 40,
    tasks: Tasks = None,
    limit: Limit = None,
    task_source: TaskSourceOption = "auto",
    batch_size: BatchSize = 16,
    include_path: IncludePath = None,
    max_gen_toks: MaxGenToks = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    reference_cache: ReferenceCache = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lowbit-eval.json"),
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Evaluate MODEL on a text (perplexity; KL divergence, top-1 agreement and Δp against the
    reference) and, with --tasks, on tasks through the lm-evaluation-harness.

    Examples: lowbit eval smol-w4 --eval-text ../shared/data/wikitext-2-raw/wiki.test.raw ;
    lowbit eval smollm2-135m --tasks piqa,arc_easy,mmlu --limit 100
    """
    from lowbit.api import TextConfig
    from lowbit.workflows import eval_job
    from lowbit.workflows.spine import Execution

    if reference is not None and tasks is not None and eval_text is None:
        from lowbit.errors import ConfigError

        raise ConfigError(
            "--reference applies to the text evaluation; add --eval-text, or compare task "
            "answers with `lowbit compare REFERENCE MODEL --tasks ...`"
        )
    task_cfg = task_config(tasks, limit, task_source, batch_size, include_path, max_gen_toks)
    no_text = eval_text is None and tasks is not None
    eval_job(
        model,
        None if no_text else TextConfig(eval_text, ctx, windows, bos=bos),
        output,
        reference=reference,
        tasks=task_cfg,
        execution=Execution(
            runtime_config(device, dtype, offload, max_memory), reference_cache=reference_cache
        ),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
    )
