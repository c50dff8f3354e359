"""Shared helpers: quantized tiny models and their dense fake-quantized twins."""

from __future__ import annotations

from pathlib import Path

import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec, Plan, Rule

IDS = torch.randint(0, 318, (2, 24), generator=torch.Generator().manual_seed(0))


def spec(bits: int = 4, sym: bool = True, group: int | None = 32, **kw) -> LayerSpec:
    from lowbit.formats import PerChannel

    gran = PerGroup(group) if group else PerChannel()
    return LayerSpec(IntFormat(bits, sym), gran, kw.get("algorithm", RTNConfig()))


def quantized(model_dir: Path, plan: Plan, calib: torch.Tensor | None = None):
    """(QuantizedModel, dense fake-quantized model, its logits on IDS)."""
    handle = api.load(str(model_dir))
    qm = api.quantize(handle, plan, None if calib is None else api.Windows(calib, {}))
    model = api.fake_quant_model(handle, qm)
    with torch.no_grad():
        logits = model(IDS).logits
    return qm, model, logits


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def mixed_plan() -> Plan:
    """q/k/v INT8 group 32, gate/up INT4 group 32, down kept, the rest INT4 group 32."""
    return Plan(
        spec(4),
        (
            Rule("re:.*self_attn\\.[qkv]_proj", spec(8)),
            Rule("re:.*down_proj", None),
        ),
    )
