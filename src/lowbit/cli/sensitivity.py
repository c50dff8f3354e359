"""``lowbit sensitivity``: how much each linear layer suffers from each spec of a menu."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli import sources
from lowbit.cli.menu import Algorithm, Bits, Formats, Groups, MenuFile
from lowbit.cli.options import (
    Address,
    AllowPickle,
    Bos,
    CalibText,
    Ctx,
    Device,
    Dtype,
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


class ExpertUnits(str, Enum):
    projection = "projection"
    expert = "expert"


def sensitivity(
    model: Model,
    output: Annotated[Path, typer.Option("--output", "-o", help="Table to write (JSON).")],
    bits: Bits = [2, 3, 4, 8],
    group_size: Groups = [64],
    algorithm: Algorithm = "gptq",
    symmetric: Annotated[bool, typer.Option("--symmetric/--asymmetric")] = True,
    menu: MenuFile = None,
    fmt: Formats = ["int"],
    calib_text: CalibText = None,
    calib_windows: Annotated[int, typer.Option(help="Windows for the Hessians.")] = 32,
    ctx: Ctx = 512,
    seed: Seed = 0,
    bos: Bos = "auto",
    probe_windows: Annotated[int, typer.Option(help="Windows for the measured KL.")] = 2,
    probe_ctx: Annotated[int, typer.Option(help="Tokens per probe window.")] = 192,
    probe_held_out: sources.ProbeHeldOut = False,
    batch: Annotated[int, typer.Option(help="Specs run together through the model.")] = 4,
    measure: Annotated[
        bool, typer.Option("--measure/--proxies-only", help="Measure KL, or proxies only.")
    ] = True,
    expert_units: Annotated[
        ExpertUnits,
        typer.Option(
            help="Mixtures of experts: one unit per projection of a block's experts "
            "(projection: one spec for all experts, as serving engines run them), or every "
            "expert's linear probed and allocated alone (expert)."
        ),
    ] = ExpertUnits.projection,
    device: Device = "auto",
    dtype: Dtype = "auto",
    offload: OffloadOption = "auto",
    max_memory: MaxMemory = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    ray: UseRay = False,
    workers: Workers = 1,
    address: Address = None,
    overwrite: Overwrite = False,
    allow_pickle: AllowPickle = False,
) -> None:
    """Quantize each linear layer (or one projection of a block's experts) alone with each
    spec; measure the KL divergence to the original and the Hessian and Fisher proxies.
    Writes OUTPUT, a CSV and an HTML report. With --ray the blocks are cut into one shard per
    worker, each a Ray task recorded in OUTPUT's results store, and the shards merged.

    Example: lowbit sensitivity smollm2-135m --bits 2 --bits 3 --bits 4 --bits 8 -o sens.json
    """
    from lowbit import api
    from lowbit.api import ProbeConfig
    from lowbit.cli.menu import menu_specs
    from lowbit.sweep.probes import probe_trial
    from lowbit.workflows import sensitivity_job
    from lowbit.workflows.spine import Execution

    store = output.with_name(f"{output.stem}.results.sqlite")
    runner = ray_runner_of(
        ray, workers, address, store, trial=probe_trial, label="sensitivity shards", resume=resume
    )
    specs = menu_specs(bits, group_size, algorithm, symmetric, menu, fmt)
    probe = ProbeConfig(
        probe_windows=probe_windows,
        probe_ctx=probe_ctx,
        batch=batch,
        measure=measure,
        expert_units=expert_units.value,
        held_out=probe_held_out,
    )
    sensitivity_job(
        model,
        specs,
        api.TextConfig(calib_text, ctx, calib_windows, seed, bos),
        probe,
        output,
        resume=resume,
        execution=Execution(runtime_config(device, dtype, offload, max_memory)),
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        runner=runner,
    )
