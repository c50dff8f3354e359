"""Step 3: prefill and decode of the built-in model measured by ``lowbit profile`` on the
runtime's device in its dtype, against two predictions of ``lowbit perf``:

- ``this_device``: the profile's own, on this device's measured roofline with the eager
  runtime's per-operator costs measured on a tiny twin (what ``lowbit profile`` prints);
- ``datasheet``: ``lowbit perf --hw KEY`` for this GPU's datasheet entry (the default
  ``fused`` runtime: one kernel per operator, no launch costs), and the same datasheet roofline
  plus the eager per-operator costs measured here (``datasheet_eager``).

Target: decode within ±10% of the prediction. When the built-in model's weights are absent
(one of its GGUF halves did not reach the device), random weights of its config are profiled:
the same shapes run the same kernels for the same time.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .record import Figures

TOLERANCE = 0.10
HW_KEYS = (  # device-name fragment → datasheet entry (lowbit ls hardware), first match wins
    ("H200", "h200"),
    ("H100 PCIe", "h100-pcie"),
    ("H100", "h100-sxm"),
    ("A100-SXM4-80GB", "a100-80gb"),
    ("A100 80GB", "a100-80gb"),
    ("A100", "a100-40gb"),
    ("L40S", "l40s"),
    ("RTX 4090", "rtx-4090"),
    ("MI300X", "mi300x"),
)


@dataclass(frozen=True)
class ProfileProtocol:
    batch: int = 1
    prompt: int = 512
    gen: int = 64


TINY_PROTOCOL = ProfileProtocol(batch=1, prompt=16, gen=4)


def datasheet_key(device_name: str, default: str = "h200") -> str:
    """The datasheet entry of a device, by its name; ``default`` for others (a CPU)."""
    return next((key for frag, key in HW_KEYS if frag in device_name), default)


def random_twin(config: Path, out: Path, rt: Any) -> str:
    """Random weights of ``config`` in ``out`` (the runtime's device and dtype)."""
    from .random_model import build_random_model, config_dict

    build_random_model(config_dict(config), out, device=rt.device, dtype=rt.dtype)
    return str(out)


def run_profile(
    figures: Figures,
    model: str,
    rt_cfg: Any,
    protocol: ProfileProtocol,
    work: Path,
    *,
    hw_key: str,
    probes: Any = None,
    out_dir: Path | None = None,
) -> None:
    """Fill ``figures`` with the measured prefill and decode and the three predictions."""
    from lowbit import api
    from lowbit.perf.estimate import Layout
    from lowbit.perf.hardware import get_hardware
    from lowbit.workflows.perf import profile_job

    rt = api.runtime(rt_cfg)
    layout = Layout(protocol.batch, protocol.prompt, protocol.gen)
    figures.update(model=model, protocol=asdict(protocol), hardware_key=hw_key)
    path = work / "profile.json"
    result = profile_job(model, None, layout, path, rt_cfg, probes=probes, overwrite=True)
    if out_dir is not None:
        shutil.copyfile(path, out_dir / "profile.json")
    e2e = result["end_to_end"]
    measured = {k: e2e[k]["measured_s"] for k in ("prefill", "decode_step")}
    figures["measured_s"] = measured
    figures["compute"] = result["compute"]
    figures["this_device"] = _ratios(
        measured, e2e["prefill"]["predicted_s"], e2e["decode_step"]["predicted_s"]
    )
    config = api.load(model).config
    executed = api.executed_precision(rt)
    sheet = get_hardware(hw_key)
    eager = replace(sheet, op_overhead=dict(result["hardware"]["op_overhead_s"]))
    for name, hw, runtime in (("datasheet", sheet, "fused"), ("datasheet_eager", eager, "eager")):
        _, _, _, est = api.estimate_performance(
            config, None, hw, replace(layout, runtime=runtime), **executed
        )
        decode = est.tpot_s or est.decode_first.seconds
        figures[name] = _ratios(measured, est.ttft_s, decode)
    names = ("this_device", "datasheet", "datasheet_eager")
    figures["decode_within_10pct"] = {k: figures[k]["decode_within_10pct"] for k in names}


def _ratios(measured: dict[str, float], prefill: float, decode: float) -> dict[str, Any]:
    dec = measured["decode_step"] / decode
    return {
        "predicted_s": {"prefill": prefill, "decode_step": decode},
        "ratio": {"prefill": measured["prefill"] / prefill, "decode_step": dec},
        "decode_within_10pct": abs(dec - 1) <= TOLERANCE,
    }


def lines(figures: Figures) -> list[str]:
    if "measured_s" not in figures:
        return []
    m = figures["measured_s"]
    out = [f"{figures['model']} ({figures['compute']}): prefill {m['prefill'] * 1e3:.2f} ms, "
           f"decode step {m['decode_step'] * 1e3:.3f} ms measured"]  # fmt: skip
    for name in ("this_device", "datasheet", "datasheet_eager"):
        if name in figures:
            f = figures[name]
            r = f["ratio"]
            out.append(
                f"{name}: measured/predicted prefill {r['prefill']:.2f}, decode "
                f"{r['decode_step']:.2f} (±10%: {'met' if f['decode_within_10pct'] else 'NOT met'})"
            )
    return out
