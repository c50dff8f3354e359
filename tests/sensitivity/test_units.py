"""Units of the sensitivity table on tiny mixtures of experts: one projection of every expert of
a block is one unit by default (its proxies the sums of its experts' own, exactly; its KL that
of all its experts quantized together), every expert's linear alone on request; dense layers
and shared experts stay units of their own."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from lowbit.algorithms import GPTQConfig, RTNConfig, rtn_quantize
from lowbit.errors import ConfigError
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity import SensitivityTable
from lowbit.sensitivity.probe import ProbeConfig, measure
from tests.helpers.tiny import make_tiny_model
from tests.helpers.whole_model import whole_model_kl

MENU = (
    LayerSpec(IntFormat(2), PerGroup(16), RTNConfig()),
    LayerSpec(IntFormat(4), PerGroup(16), GPTQConfig()),
)
PROXIES = ProbeConfig(
    probe_windows=2, probe_ctx=16, fisher_windows=2, fisher_ctx=16, chunk_size=3, measure=False
)


@pytest.fixture(scope="module")
def rt():
    return resolve_runtime(RuntimeConfig(dtype="float32"))


def _calib(handle, n=6, ctx=24):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, handle.config.vocab_size, (n, ctx), generator=g)


@pytest.fixture(scope="module", params=["qwen3_moe", "deepseek_v3"])
def tables(request, tiny_root, rt):
    """(handle, the table by projection, the table by expert), proxies only."""
    handle = resolve_model(str(make_tiny_model(tiny_root, request.param)))
    calib = _calib(handle)
    by_projection = measure(handle, MENU, calib, PROXIES, runtime=rt)
    by_expert = measure(
        handle,
        MENU,
        calib,
        ProbeConfig(**{**PROXIES.__dict__, "expert_units": "expert"}),
        runtime=rt,
    )
    return handle, by_projection, by_expert


def _n_experts(handle) -> int:
    c = handle.config
    return int(getattr(c, "num_experts", None) or c.n_routed_experts)


def test_one_unit_per_projection_of_a_block_s_experts(tables):
    handle, table, _ = tables
    model = handle.load_model()
    arch, E = handle.arch, _n_experts(handle)
    linears = handle.arch.layer_names()
    for i, spec in enumerate(arch.blocks):
        units = [x for x in table.layers if x.block == i and x.members]
        if not spec.experts:  # DeepSeek-V3's dense first block
            assert not units
            continue
        assert sorted(x.module for x in units) == [
            f"mlp.experts.*.{p}" for p in ("down_proj", "gate_proj", "up_proj")
        ]
        for x in units:
            assert len(x.members) == E
            assert x.numel == sum(model.get_submodule(m).weight.numel() for m in x.members)
            # the unit's name is the plan rule that matches exactly its members
            assert x.name.startswith("re:")
            assert [n for n in linears if re.fullmatch(x.name[3:], n)] == list(x.members)
        singles = [x for x in table.layers if x.block == i and not x.members]
        assert [x.module for x in singles] == [
            m for m in spec.linear_names if not m.startswith("mlp.experts.")
        ]  # attention and shared experts: their own units
    assert sum(x.numel for x in table.layers) == sum(
        model.get_submodule(n).weight.numel() for n in linears
    )
    assert table.is_complete()


def test_gate_and_up_units_are_fused_and_down_units_count_as_down(tables):
    _, table, _ = tables
    for x in table.layers:
        if x.module == "mlp.experts.*.gate_proj":
            up = x.name.replace("gate_proj", "up_proj")
            assert (x.name, up) in table.fused
    assert "mlp.experts.*.down_proj" in table.value_and_down


def test_unit_proxies_and_bits_are_the_sums_of_its_experts(tables):
    _, table, by_expert = tables
    units = [x for x in table.layers if x.members]
    assert units
    for x in units:
        for s in range(len(MENU)):
            unit = table.entry(x.name, s)
            experts = [by_expert.entry(m, s) for m in x.members]
            assert unit.bits == sum(e.bits for e in experts)
            assert unit.hessian == sum(e.hessian for e in experts)  # same quantization: exact
            assert unit.fisher == sum(e.fisher for e in experts)
    # the layers outside the experts are measured alike either way
    for x in table.layers:
        if not x.members:
            for s in range(len(MENU)):
                a, b = table.entry(x.name, s), by_expert.entry(x.name, s)
                assert (a.bits, a.hessian, a.fisher) == (b.bits, b.hessian, b.fisher)


def test_expert_option_gives_every_expert_s_linear_its_own_unit(tables):
    handle, table, by_expert = tables
    E, arch = _n_experts(handle), handle.arch
    assert not any(x.members for x in by_expert.layers)
    assert [x.name for x in by_expert.layers] == arch.layer_names()
    moe_blocks = sum(1 for b in arch.blocks if b.experts)
    assert len(by_expert.layers) - len(table.layers) == moe_blocks * (3 * E - 3)
    assert by_expert.probe["expert_units"] == "expert"
    assert table.probe["expert_units"] == "projection"


def test_units_survive_the_json_round_trip(tables):
    _, table, _ = tables
    back = SensitivityTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back.layers == table.layers and back.fused == table.fused
    records = table.to_dict()["layers"]
    assert all(("members" in r) == r["name"].startswith("re:") for r in records)


def test_unit_kl_equals_all_its_experts_quantized_together(tiny_root, rt):
    handle = resolve_model(str(make_tiny_model(tiny_root, "qwen3_moe")))
    calib = _calib(handle)
    rtn = MENU[:1] + (LayerSpec(IntFormat(3), PerGroup(16), RTNConfig()),)
    cfg = ProbeConfig(**{**PROXIES.__dict__, "measure": True, "fisher": False, "blocks": (1,)})
    table = measure(handle, rtn, calib, cfg, runtime=rt)
    model = handle.load_model(rt)
    probe = calib[: cfg.probe_windows, : cfg.probe_ctx]
    unit = next(x for x in table.layers if x.block == 1 and x.module == "mlp.experts.*.gate_proj")
    for s, spec in enumerate(rtn):
        changed = copy.deepcopy(model)
        for m in unit.members:
            layer = changed.get_submodule(m)
            layer.weight.data = rtn_quantize(
                layer.weight.data, spec.fmt, spec.granularity
            ).dequantize()
        ref = whole_model_kl(model, changed, probe)
        assert table.entry(unit.name, s).kl == pytest.approx(ref, rel=1e-4, abs=2e-7)
    # W2 of every expert's gate is far above the float32 floor: one expert alone would not do
    assert table.entry(unit.name, 0).kl > 5 * 2e-7


def test_unknown_expert_units_are_refused():
    with pytest.raises(ConfigError, match="'projection'"):
        ProbeConfig(expert_units="layer")  # type: ignore[arg-type]
