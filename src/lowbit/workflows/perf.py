"""The performance jobs: ``perf`` (the analytical model from config + plan, no weights) and
``profile`` (measured on this device and compared with the model's prediction for it)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.table import Table

from lowbit import api
from lowbit.plan import Plan
from lowbit.report.console import console
from lowbit.runtime import RuntimeConfig

# predicted operator → the measured category it is compared with
CATEGORY = {
    "attention": "attention",
    "rotary": "attention",
    "kv_write": "attention",
    "input_norm": "norm",
    "post_norm": "norm",
    "final_norm": "norm",
    "qk_norm": "norm",
    "latent_norm": "norm",
    "attn_out_norm": "norm",
    "mlp_out_norm": "norm",
}


def perf_job(
    model: str,
    plan: Plan | None,
    hardware: str,
    layout: Any,
    out: Path,
    *,
    bits: dict[str, int],
    compute: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    api.check_outputs(out, out.with_suffix(".html"), overwrite=overwrite)
    config = api.model_config(model)
    _, prec, hw, est = api.estimate_performance(
        config, plan, hardware, layout, compute=compute, **bits
    )
    sweep = _batch_sweep(config, plan, hardware, layout, bits, compute)
    result = {
        "model": model,
        "hardware": hw.to_dict(),
        "layout": asdict(layout),
        "compute": prec.compute,
        "bits": {**bits, "mean_linear_weight_bits": _mean_bits(prec)},
        "estimate": est.to_dict(),
        "batch_sweep": sweep,
    }
    _print(result)
    api.write_result(out, {**api.provenance_light("perf"), **result}, overwrite=overwrite)
    from lowbit.report.combined import combined_report

    page = {**api.provenance_light("perf"), **result}
    title = f"lowbit perf: {model} on {hw.name}"
    combined_report([(str(out), page)], title).write(out.with_suffix(".html"), overwrite=overwrite)
    return result


def _mean_bits(prec: Any) -> float | None:
    vals = list(prec.weight_bits.values())
    return sum(vals) / len(vals) if vals else prec.dense_bits


def _batch_sweep(
    config: Any,
    plan: Plan | None,
    hardware: str,
    layout: Any,
    bits: dict[str, int],
    compute: str | None,
) -> list[dict[str, Any]]:
    rows = []
    batch = 1
    while batch <= 1024:
        _, _, _, est = api.estimate_performance(
            config, plan, hardware, replace(layout, batch=batch), compute=compute, **bits
        )
        if not est.fits:
            break
        rows.append(
            {
                "batch": batch,
                "tokens_per_s": est.tokens_per_s,
                "tpot_s": est.tpot_s,
                "ttft_s": est.ttft_s,
            }
        )
        batch *= 2
    return rows


def _print(result: dict[str, Any]) -> None:
    est = result["estimate"]
    table = Table(title=f"{result['model']} on {result['hardware']['name']} ({result['compute']})")
    for col in (
        "TTFT ms",
        "TPOT ms",
        "tokens/s",
        "weights GB",
        "KV GB",
        "fits",
        "max batch",
        "max context",
    ):
        table.add_column(col, justify="right")
    mem = est["memory_bytes"]
    table.add_row(
        f"{est['ttft_s'] * 1e3:.3f}",
        f"{est['tpot_s'] * 1e3:.4f}",
        f"{est['tokens_per_s']:.1f}",
        f"{mem['weights'] / 1e9:.3f}",
        f"{mem['kv_cache'] / 1e9:.3f}",
        str(est["fits"]),
        str(est["max_batch"]),
        str(est["max_context"]),
    )
    console.print(table)


def compare(predicted: list[dict[str, Any]], measured: dict[str, float]) -> list[dict[str, Any]]:
    """Predicted seconds per measured category (operators summed over blocks) beside the
    measured ones. Expert and shared-expert operators (``experts.gate_proj``) join their
    projection's category, as the profiler names modules by their last component."""
    pred: dict[str, float] = {}
    for row in predicted:
        if row["kind"] == "comm":
            continue
        short = row["name"].rsplit(".", 1)[-1]
        name = CATEGORY.get(short, short)
        pred[name] = pred.get(name, 0.0) + row["seconds"]
    rows = []
    for name in sorted(set(pred) | set(measured), key=lambda n: -pred.get(n, 0.0)):
        p, m = pred.get(name, 0.0), measured.get(name, 0.0)
        rows.append(
            {"name": name, "predicted_s": p, "measured_s": m, "ratio": m / p if p else None}
        )
    return rows


def profile_job(
    model: str,
    plan: Plan | None,
    layout: Any,
    out: Path,
    rt: RuntimeConfig | None = None,
    *,
    calib: api.TextConfig | None = None,
    probes: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure ``model`` (fake-quantized under ``plan`` if given) on ``rt``'s device in its
    compute dtype (``--device``/``--dtype``) and compare with the prediction for that device's
    measured roofline, weights as executed: dense, at the compute dtype's bits (fp32: 32,
    bf16 and fp16: 16, for weights, activations and the KV cache alike). ``probes``: the
    roofline micro-benchmarks' sizes (:mod:`lowbit.perf.measure`; default: full)."""
    from lowbit.perf.profile import profile

    api.check_outputs(out, out.with_suffix(".html"), overwrite=overwrite)
    handle = api.load(model)
    runtime = api.runtime(rt)
    dense = _dense_model(handle, plan, calib, runtime)
    executed = api.executed_precision(runtime)
    layout = replace(layout, runtime="eager")  # what runs here: transformers in eager PyTorch
    shape, _, hw, est = api.estimate_performance(
        handle.config, None, api.this_machine_for(handle, runtime, probes=probes), layout,
        **executed,
    )  # fmt: skip
    console.print(
        f"measuring {model} on {hw.name} in {executed['compute']}: batch {layout.batch}, "
        f"prompt {layout.prompt}, gen {layout.gen}"
    )
    measured = profile(
        dense, batch=layout.batch, prompt=layout.prompt, gen=layout.gen, vocab=shape.vocab
    )
    est_d = est.to_dict()
    result = {
        "model": model,
        "plan": None if plan is None else plan.to_dict(),
        "hardware": hw.to_dict(),
        "runtime": runtime.describe(),
        "compute": executed["compute"],
        "bits": {k: v for k, v in executed.items() if k != "compute"},
        "layout": asdict(layout),
        "end_to_end": _end_to_end(est, measured),
        "comparison": {
            "prefill": compare(est_d["prefill_ops"], measured.prefill_ops),
            "decode": compare(est_d["decode_ops"], measured.decode_ops),
        },
        "measured": measured.to_dict(),
    }
    _print_profile(result, f"{model}: measured against predicted on {hw.name}")
    api.write_result(out, {**api.provenance_light("profile"), **result}, overwrite=overwrite)
    from lowbit.report.perf import profile_report

    profile_report(result).write(out.with_suffix(".html"), overwrite=overwrite)
    return result


def _dense_model(handle: Any, plan: Plan | None, calib: api.TextConfig | None, runtime: Any) -> Any:
    if plan is None:
        return handle.load_model(runtime)
    from lowbit.workflows.spine import quantize_windows, text_windows

    cfg = calib or api.TextConfig()
    windows = text_windows(handle, cfg, calibration=True) if plan.needs_calibration() else None
    qm = quantize_windows(handle, plan, windows, "quantize", runtime)
    return api.fake_quant_model(handle, qm, runtime)


def _end_to_end(est: Any, measured: Any) -> dict[str, dict[str, float]]:
    rows = {
        "prefill": {"predicted_s": est.ttft_s, "measured_s": measured.prefill_s},
        "decode_step": {
            "predicted_s": est.tpot_s or est.decode_first.seconds,
            "measured_s": measured.decode_step_s,
        },
    }
    for v in rows.values():
        v["ratio"] = v["measured_s"] / v["predicted_s"]
    return rows


def _print_profile(result: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for col in ("", "predicted ms", "measured ms", "measured / predicted"):
        table.add_column(col, justify="right")
    for name, v in result["end_to_end"].items():
        ms = (f"{v['predicted_s'] * 1e3:.2f}", f"{v['measured_s'] * 1e3:.2f}")
        table.add_row(name, *ms, f"{v['ratio']:.2f}")
    console.print(table)
