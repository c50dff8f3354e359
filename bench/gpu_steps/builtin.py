"""Step 1: the built-in model's GPTQ W4 g64 (the spine protocol of BENCHMARKS.md) quantized
and evaluated on the runtime's device in its dtype, against the CPU fp32 figures.

Protocol (full): calibration 128 × 512 windows of ``wiki.valid.tokens`` (seed 0); evaluation
WikiText-2 raw test, ctx 512, the first 40 windows, KL divergence to the reference computed on
the same device in the same dtype (bf16 on a GPU). Target: the KL within 5% of the CPU fp32
run's (``cpu_spine.json``, from the spine section of BENCHMARKS.md). The tiny mode runs the
same protocol, shortened, on a tiny model, and its CPU fp32 side in the same process.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data import CALIB_TEXT, EVAL_TEXT
from .record import Figures, peak_memory, reset_peak

TOLERANCE = 0.05
CPU_RESULT = Path(__file__).with_name("cpu_spine.json")


@dataclass(frozen=True)
class BuiltinProtocol:
    calib_windows: int = 128
    eval_windows: int = 40
    ctx: int = 512
    bits: int = 4
    group_size: int = 64
    seed: int = 0


TINY_PROTOCOL = BuiltinProtocol(calib_windows=8, eval_windows=4, ctx=64)


def measure(
    model: str, data: Path, rt_cfg: Any, protocol: BuiltinProtocol, work: Path
) -> dict[str, Any]:
    """GPTQ of ``model`` under ``protocol`` on ``rt_cfg``'s runtime, evaluated against its
    reference there: perplexities, KL, top-1 agreement, times and peak memory."""
    from lowbit import api

    rt = api.runtime(rt_cfg)
    t0 = time.perf_counter()
    handle = api.load(model)
    load_s = time.perf_counter() - t0
    calib = api.text_windows(
        handle,
        api.TextConfig(str(data / CALIB_TEXT), protocol.ctx, protocol.calib_windows, protocol.seed),
        calibration=True,
    )
    windows = api.text_windows(
        handle,
        api.TextConfig(str(data / EVAL_TEXT), protocol.ctx, protocol.eval_windows),
        calibration=False,
    )
    spec = api.spec_from_options(protocol.bits, protocol.group_size, True, "gptq")
    reset_peak(rt.device)
    qm = api.quantize(handle, api.plan_from_options(spec), calib, rt=rt)
    quantize_peak = peak_memory(rt.device)
    cache = work / f"reference-{rt.device.type}-{str(rt.dtype).removeprefix('torch.')}.lbref"
    res = api.evaluate(
        api.model_view(handle), {"gptq": api.quantized_view(qm, "gptq")}, windows, rt, cache=cache
    )
    cache.unlink(missing_ok=True)
    ref, q = res["reference"], res["gptq"]
    assert q.kl is not None
    return {
        "runtime": rt.describe(),
        "model": handle.describe(),
        "scheme": spec.describe(),
        "calibration": calib.info,
        "evaluation": windows.info,
        "load_s": load_s,
        "quantize_s": qm.timings["quantize_s"],
        "quantize_peak": quantize_peak,
        "reference_s": ref.seconds,
        "eval_s": q.wall_seconds,
        "reference_perplexity": ref.perplexity,
        "perplexity": q.perplexity,
        "kl_mean": q.kl["mean"],
        "kl": q.kl,
        "top1_agreement": q.top1_agreement,
        "bits_per_weight_linear": api.footprint(handle, qm).bits_per_weight_linear,
    }


def run_builtin(
    figures: Figures,
    model: str,
    data: Path,
    rt_cfg: Any,
    protocol: BuiltinProtocol,
    work: Path,
    *,
    cpu_result: Path | None,
) -> None:
    """Fill ``figures``: the CPU fp32 reference figures (read from ``cpu_result``, or, when it
    is None, measured here on the CPU in fp32), this runtime's, and the KL comparison."""
    from lowbit.runtime import RuntimeConfig

    figures["protocol"] = asdict(protocol)
    if cpu_result is None:
        figures["cpu"] = measure(model, data, RuntimeConfig("cpu", "float32"), protocol, work)
        figures["cpu"]["source"] = "measured in this run (--tiny)"
    else:
        cpu = json.loads(Path(cpu_result).read_text())
        figures["cpu"] = {**cpu, "source": str(cpu_result)}
        if cpu.get("protocol") and cpu["protocol"] != asdict(protocol):
            figures["protocol_mismatch"] = {"cpu": cpu["protocol"], "here": asdict(protocol)}
    figures["device"] = here = measure(model, data, rt_cfg, protocol, work)
    ratio = here["kl_mean"] / figures["cpu"]["kl_mean"]
    figures["kl_ratio"] = ratio
    figures["kl_within_5pct"] = abs(ratio - 1) <= TOLERANCE


def lines(figures: Figures) -> list[str]:
    out = []
    if "device" in figures:
        d, c = figures["device"], figures["cpu"]
        rt = d["runtime"]
        out.append(
            f"{rt['device']} {rt['dtype']}: KL {d['kl_mean']:.4f} (CPU fp32 {c['kl_mean']:.4f}, "
            f"ratio {figures['kl_ratio']:.3f}: within 5% "
            f"{'met' if figures['kl_within_5pct'] else 'NOT met'}), ppl {d['perplexity']:.3f} "
            f"(reference {d['reference_perplexity']:.3f}), top-1 {d['top1_agreement']:.2%}"
        )
        out.append(f"quantize {d['quantize_s']:.1f} s, evaluation {d['eval_s']:.1f} s, "
                   f"load {d['load_s']:.1f} s")  # fmt: skip
    return out
