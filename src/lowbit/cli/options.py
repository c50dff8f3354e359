"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from lowbit.api import TaskConfig
    from lowbit.runtime import RuntimeConfig

Model = Annotated[
    str,
    typer.Argument(
        help="A Hugging Face model directory, a .gguf file, or a built-in name (smollm2-135m)."
    ),
]
EvalText = Annotated[
    str | None,
    typer.Option(
        "--eval-text",
        help="Evaluation text: a file, "
        "builtin:python-docs, or a hub dataset NAME:CONFIG:SPLIT "
        "(e.g. wikitext:wikitext-2-raw-v1:test). Default: builtin:python-docs, stated in the "
        "output and the result.",
    ),
]
CalibText = Annotated[
    str | None,
    typer.Option(
        "--calib-text",
        help="Calibration text (same forms); must differ from the evaluation text. Default: "
        "builtin:python-docs, stated in the output and the result.",
    ),
]
Ctx = Annotated[int, typer.Option("--ctx", help="Tokens per window.")]
EvalWindows = Annotated[int, typer.Option("--windows", help="Evaluate the first N windows.")]
CalibWindows = Annotated[int, typer.Option("--calib-windows", help="Calibration windows.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the calibration window draw.")]
Bos = Annotated[
    str,
    typer.Option(
        "--bos",
        help="Start every evaluation and calibration window with the BOS token: auto (when "
        "the tokenizer adds one by default, as llama.cpp decides), always, or never.",
    ),
]
Output = Annotated[Path, typer.Option("--output", "-o", help="Where to write the result.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle", help="Allow loading .bin (pickled) weights: only for files you trust."
    ),
]
Tasks = Annotated[
    str | None,
    typer.Option(
        "--tasks",
        help="Comma-separated tasks: lambada_openai, hellaswag, piqa, winogrande, arc_easy, "
        "arc_challenge, gsm8k, mmlu (or mmlu_stem, mmlu_<subject>, ...), read from local files "
        "when the data directory has them; 'standard' for all of them; a task YAML file of "
        "your own, or a task name in an --include-path; any other lm-evaluation-harness task "
        "name (hub).",
    ),
]
IncludePath = Annotated[
    list[Path] | None,
    typer.Option(
        "--include-path",
        help="A directory of task YAML files in the lm-evaluation-harness's format (repeatable); "
        "its task names can then be given to --tasks.",
    ),
]
MaxGenToks = Annotated[
    int | None,
    typer.Option(
        "--max-gen-toks",
        help="Generation tasks (gsm8k): at most this many new tokens per item (default: the "
        "task's own, else the harness's 256).",
    ),
]
Limit = Annotated[
    int | None, typer.Option("--limit", help="Evaluate the first N items of each task.")
]
TaskSourceOption = Annotated[
    str,
    typer.Option(
        "--task-source",
        help="auto (local files when present, else the hub), local or hub.",
    ),
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", help="Log-likelihood requests per forward pass.")
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where models run: auto (the first GPU if any, else the CPU), cpu, cuda or cuda:N.",
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Compute dtype: auto (bfloat16 on a GPU, float32 on a CPU), float32, "
        "bfloat16 or float16. Weights stay in their stored dtype on disk; statistics are fp32.",
    ),
]
ComputeDtype = Annotated[
    str,
    typer.Option(
        "--compute-dtype",
        help="Compute dtype when quantizing first: auto (bfloat16 on a GPU, "
        "float32 on a CPU), float32, bfloat16 or float16.",
    ),
]
OffloadOption = Annotated[
    str,
    typer.Option(
        "--offload",
        help="Where activations between blocks live: auto (on the device when "
        "they fit), device, or cpu (moved to the device one chunk at a time).",
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory this run may use on the device, e.g. 2GB (default: what is "
        "free there, or the cgroup limit); a budget below one block's needs is refused.",
    ),
]
ChunkSize = Annotated[
    int, typer.Option("--chunk-size", help="Windows run through a block together.")
]
ReferenceCache = Annotated[
    Path | None,
    typer.Option(
        "--reference-cache",
        help="File of the reference's cached log-probabilities (default: "
        "under $LOWBIT_CACHE/references); reused when it matches, refused when it does not.",
    ),
]


def task_config(
    tasks: str | None,
    limit: int | None,
    source: str,
    batch_size: int,
    include_paths: list[Path] | None,
    max_gen_toks: int | None,
) -> TaskConfig | None:
    """The TaskConfig of the task options (validated), or None without --tasks."""
    from lowbit.api import TaskConfig

    if tasks is None:
        if include_paths:
            from lowbit.errors import ConfigError

            raise ConfigError("--include-path names where tasks are; add --tasks NAME")
        return None
    return TaskConfig(
        tuple(tasks.split(",")), limit, source, batch_size,  # type: ignore[arg-type]
        include_paths=tuple(map(str, include_paths or ())), max_gen_toks=max_gen_toks,
    )  # fmt: skip


def runtime_config(device: str, dtype: str, offload: str, max_memory: str | None) -> RuntimeConfig:
    """The RuntimeConfig of the runtime options (validated, no torch imported)."""
    from lowbit.cli.menu import parse_size
    from lowbit.runtime import RuntimeConfig

    limit = None if max_memory is None else parse_size(max_memory, "--max-memory")
    return RuntimeConfig(device, dtype, offload, limit)  # type: ignore[arg-type]  # validated


UseRay = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Run the work as trials of a sweep on Ray (a local Ray, or --address), recorded "
        "in a results store beside the output (resumable trial by trial).",
    ),
]
Workers = Annotated[int, typer.Option(help="With --ray: trials in flight at once.")]
Address = Annotated[
    str | None, typer.Option(help="With --ray: an existing Ray cluster (HOST:PORT).")
]


def ray_runner_of(use: bool, workers: int, address: str | None, store: Path, **kw: Any) -> Any:
    """The Ray runner of the --ray options (``kw``: the trial, label, resume), or None."""
    from lowbit.errors import ConfigError

    if not use:
        if workers != 1 or address is not None:
            raise ConfigError("--workers and --address go with --ray (they set where trials run)")
        return None
    from lowbit.sweep.points import ray_runner

    return ray_runner(store, address, workers, **kw)


def given_options(context: typer.Context, names: Iterable[str]) -> list[str]:
    """How the command line spells each of ``names`` (parameters of ``context``'s command)
    that the user set, on the command line or through the environment, in the command's
    order; a default left alone is not listed. (Sources are compared by name: typer carries
    its own copy of click, whose enum is not ``click.core.ParameterSource``.)"""
    wanted = set(names)
    return [
        "/".join([p.opts[0], *p.secondary_opts[:1]])  # a flag pair: --symmetric/--asymmetric
        for p in context.command.params
        if p.name in wanted and _source(context, p.name) in ("COMMANDLINE", "ENVIRONMENT")
    ]


def _source(context: typer.Context, name: str) -> str | None:
    source = context.get_parameter_source(name)
    return None if source is None else source.name
