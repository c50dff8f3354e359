"""``lowbit perf`` (the roofline model from config + plan) and ``lowbit profile`` (measured on
this device against the model's prediction)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lowbit.cli.options import Device, Dtype, Overwrite, runtime_config

PlanOpt = Annotated[Path | None, typer.Option(help="A plan file (JSON/YAML); default: dense.")]
Batch = Annotated[int, typer.Option(help="Sequences per batch.")]
Prompt = Annotated[int, typer.Option(help="Prompt tokens per sequence.")]
Gen = Annotated[int, typer.Option(help="Generated tokens per sequence.")]


def perf(
    model: Annotated[
        str,
        typer.Argument(
            help="A config.json, a model directory (no weights needed) or a model source."
        ),
    ],
    plan: PlanOpt = None,
    hw: Annotated[
        str, typer.Option("--hw", help="Hardware (`lowbit ls hardware`), or `this`.")
    ] = "h100-sxm",
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree.")] = 1,
    pp: Annotated[int, typer.Option(help="Pipeline-parallel degree.")] = 1,
    dp: Annotated[int, typer.Option(help="Data-parallel replicas.")] = 1,
    ep: Annotated[int, typer.Option(help="Expert-parallel degree (mixture of experts).")] = 1,
    batch: Batch = 1,
    prompt: Prompt = 512,
    gen: Gen = 128,
    weight_bits: Annotated[
        int, typer.Option(help="Bits of dense tensors and unplanned layers.")
    ] = 16,
    act_bits: Annotated[
        int | None,
        typer.Option(help="Activation bits (8 for W8A8); default: the plan's, else 16."),
    ] = None,
    kv_bits: Annotated[
        int | None, typer.Option(help="KV-cache bits; default: the plan's kv_cache, else 16.")
    ] = None,
    compute: Annotated[
        str | None, typer.Option(help="Matmul operand dtype (default: from the bits).")
    ] = None,
    contiguous_kv: Annotated[
        bool, typer.Option("--contiguous-kv", help="No KV-cache paging.")
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lowbit-perf.json"),
    overwrite: Overwrite = False,
) -> None:
    """Predict latency, throughput and memory of MODEL under PLAN on a GPU and parallel layout.

    Example: lowbit perf llama-3-8b/config.json --plan plan.yaml --hw h100-sxm --tp 2 --batch 8
    --prompt 2048 --gen 256
    """
    from lowbit.api import Layout, Plan
    from lowbit.workflows.perf import perf_job

    layout = Layout(batch, prompt, gen, tp, pp, dp, ep, paged=not contiguous_kv)
    bits = {"dense_bits": weight_bits, "act_bits": act_bits, "kv_bits": kv_bits}
    perf_job(
        model,
        Plan.load(plan) if plan else None,
        hw,
        layout,
        output,
        bits=bits,
        compute=compute,
        overwrite=overwrite,
    )


def profile(
    model: Annotated[str, typer.Argument(help="A model source (weights are run).")],
    plan: PlanOpt = None,
    batch: Batch = 1,
    prompt: Prompt = 128,
    gen: Gen = 32,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("lowbit-profile.json"),
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Measure prefill and decode of MODEL (fake-quantized under PLAN) on the chosen device in
    the chosen dtype and compare each operator with the prediction for that device and dtype.

    Example: lowbit profile smollm2-135m --batch 1 --prompt 128 --gen 32 --device cuda --dtype
    bfloat16
    """
    from lowbit.api import Layout, Plan
    from lowbit.workflows.perf import profile_job

    layout = Layout(batch, prompt, gen)
    rt = runtime_config(device, dtype, "auto", None)
    profile_job(model, Plan.load(plan) if plan else None, layout, output, rt, overwrite=overwrite)
