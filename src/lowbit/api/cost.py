"""The API's performance-model functions (re-exported by :mod:`lowbit.api`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.errors import ConfigError
from lowbit.plan import Plan

if TYPE_CHECKING:
    from lowbit.models.sources import ModelHandle
    from lowbit.perf.estimate import Estimate, Layout
    from lowbit.perf.hardware import Hardware
    from lowbit.perf.measure import Probes
    from lowbit.perf.operators import Precision
    from lowbit.perf.shape import ModelShape
    from lowbit.runtime import Runtime

# a model configuration: a transformers PretrainedConfig or the dict of a config.json
ModelConfig = object


def model_config(source: str) -> ModelConfig:
    """A model's config alone: a ``config.json`` file, a directory holding one (weights are not
    needed), or any model source ``load`` accepts."""
    import json

    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if path.is_dir() and (path / "config.json").is_file() and not (path / "lowbit.json").is_file():
        return json.loads((path / "config.json").read_text())
    from lowbit.api import load

    return load(source).config


def estimate_performance(
    config: ModelConfig,
    plan: Plan | None,
    hardware: Hardware | str,
    layout: Layout,
    *,
    dense_bits: int = 16,
    act_bits: int | None = None,
    kv_bits: int | None = None,
    compute: str | None = None,
) -> tuple[ModelShape, Precision, Hardware, Estimate]:
    """(shape, precision, hardware, estimate) for ``config`` under ``plan`` on ``hardware``
    (a datasheet name from ``lowbit ls hardware``, or ``this`` to measure the current device)."""
    from lowbit.perf.estimate import estimate
    from lowbit.perf.hardware import get_hardware
    from lowbit.perf.measure import this_machine
    from lowbit.perf.precision import precision_for
    from lowbit.perf.shape import shape_from_config

    shape = shape_from_config(config)
    prec = precision_for(
        shape, plan, dense_bits=dense_bits, act_bits=act_bits, kv_bits=kv_bits, compute=compute
    )
    if not isinstance(hardware, str):
        hw = hardware
    elif hardware == "this":
        from lowbit.models.sources import cache_root

        hw = this_machine(cache_root())
    else:
        hw = get_hardware(hardware)
    return shape, prec, hw, estimate(shape, prec, hw, layout)


def this_machine_for(
    handle: ModelHandle, rt: Runtime | None = None, *, probes: Probes | None = None
) -> Hardware:
    """The roofline of ``rt``'s device (default: this machine's runtime) measured in its
    compute dtype, with the eager runtime's fixed cost per operator measured on a tiny twin of
    ``handle``'s architecture run there in that dtype. ``probes``: the micro-benchmark sizes
    (:mod:`lowbit.perf.measure`; default: the full ones for the device)."""
    from dataclasses import replace

    from lowbit.api.core import runtime
    from lowbit.models.sources import cache_root
    from lowbit.models.twin import tiny_twin
    from lowbit.perf.measure import this_machine
    from lowbit.perf.profile import operator_overheads

    rt = rt or runtime()
    hw = this_machine(cache_root(), device=rt.device, dtype=rt.dtype, probes=probes)
    twin = tiny_twin(handle.config).to(device=rt.device, dtype=rt.dtype)
    return replace(hw, op_overhead=operator_overheads(twin))


def executed_precision(rt: Runtime) -> dict[str, int | str]:
    """The performance model's precision for a dense model run on ``rt``: weights,
    activations and KV cache at the compute dtype's bits, matmuls in it
    (``estimate_performance`` keywords)."""
    from lowbit.perf.precision import BITS, compute_of_dtype

    compute = compute_of_dtype(str(rt.dtype).removeprefix("torch."))
    bits = BITS[compute]
    return {"dense_bits": bits, "act_bits": bits, "kv_bits": bits, "compute": compute}
