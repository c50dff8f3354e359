"""``lowbit quantize``: quantize a model and save it (lowbit's own safetensors layout)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    given_options,
    runtime_config,
)
from lowbit.models.pipeline import ExpertCalibration, Propagation

if TYPE_CHECKING:
    from lowbit.plan import Plan


class ExpertPolicy(str, Enum):
    all = "all"
    routed = "routed"


class Granularity(str, Enum):
    group = "group"
    channel = "channel"
    tensor = "tensor"


# options that only some plans read: what sets the one spec (a --plan file sets every layer's),
# GPTQ's own, and those of the calibration pass (a plan of RTN alone runs none)
SPEC_OPTIONS = ("bits", "granularity", "group_size", "symmetric", "fmt", "clipping", "algorithm")
GPTQ_OPTIONS = ("act_order", "damp")
CALIBRATION_OPTIONS = (
    "calib_text",
    "calib_windows",
    "ctx",
    "seed",
    "bos",
    "chunk_size",
    "propagation",
    "expert_calibration",
    "expert_min_tokens",
)


def quantize(
    context: typer.Context,
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

    _refuse_spec_options(context, plan, algorithm, fmt, granularity.value)
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
    _refuse_calibration_options(context, the_plan, from_file=plan is not None)
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


def _refuse_spec_options(
    context: typer.Context, plan: Path | None, algorithm: str, fmt: str, granularity: str
) -> None:
    """Options the run would ignore are refused: with ``--plan`` those of the one spec (the
    plan sets every layer's); else each option the chosen algorithm, format or granularity
    does not read."""
    from lowbit.errors import ConfigError

    if plan is not None:
        given = given_options(context, (*SPEC_OPTIONS, *GPTQ_OPTIONS))
        if given:
            raise ConfigError(
                f"{', '.join(given)} with --plan {plan}: the plan file sets every layer's format "
                "and algorithm, so these would be ignored; drop them, or write them into the plan"
            )
        return
    from lowbit.algorithms import ALGORITHMS, GPTQConfig
    from lowbit.formats import FORMATS

    FORMATS.get(fmt)  # an unknown name is told as such (with suggestions) first
    gptq, fmt = ALGORITHMS.get(algorithm) is GPTQConfig, fmt.lower()
    unread = (
        (GPTQ_OPTIONS, not gptq, f"GPTQ options, which --algorithm {algorithm} would ignore; "
         "drop them, or use --algorithm gptq"),
        (("bits",), fmt not in ("int", "lut"), f"--format {fmt} has its own code width, so "
         "--bits would be ignored; drop it, or use --format int or lut"),
        (("symmetric",), fmt != "int", f"only --format int takes --symmetric/--asymmetric "
         f"(--format {fmt} would ignore it); drop it, or use --format int"),
        (("group_size",), granularity != "group", f"--granularity {granularity} has no groups, "
         "so --group-size would be ignored; drop it, or use --granularity group"),
    )  # fmt: skip
    for names, ignored, why in unread:
        given = given_options(context, names)
        if given and ignored:
            raise ConfigError(f"{', '.join(given)}: {why}")


def _refuse_calibration_options(context: typer.Context, plan: Plan, from_file: bool) -> None:
    """A plan that needs no calibration (RTN alone) runs no calibration pass, so options of
    that pass are refused rather than ignored (a plan that quantizes nothing is refused later,
    naming what it lacks)."""
    from lowbit.errors import ConfigError

    given = given_options(context, CALIBRATION_OPTIONS)
    specs = (plan.default, *(rule.spec for rule in plan.rules))
    does_something = any(s is not None for s in specs) or plan.uses_runtime_options
    if given and does_something and not plan.needs_calibration():
        fix = (
            "give the plan's specs an algorithm that calibrates (gptq, awq)"
            if from_file
            else "quantize with an algorithm that calibrates (--algorithm gptq or awq)"
        )
        raise ConfigError(
            f"{', '.join(given)}: calibration options, but this plan needs no calibration (RTN "
            f"rounds each weight on its own), so they would be ignored; drop them, or {fix}"
        )
