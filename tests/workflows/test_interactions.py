"""The interaction measurer on the tiny Llama: no quantized unit, no divergence; a unit's KL
agrees with lowbit's own evaluation of the same plan; configurations restore the weights."""

from __future__ import annotations

import pytest
import torch

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.plan import LayerSpec, Plan, Rule
from lowbit.workflows.interactions import Measurer, measure_pairs, nonadditivity

SPEC = LayerSpec(IntFormat(2), PerGroup(16), RTNConfig())
UNITS = [
    ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"),
    ("model.layers.0.mlp.down_proj",),
    ("model.layers.1.mlp.down_proj",),
]


@pytest.fixture(scope="module")
def setup(tiny_root):
    from tests.helpers.tiny import make_tiny_model

    handle = api.load(str(make_tiny_model(tiny_root, "llama")))
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    return handle, ids, Measurer(handle, ids, api.runtime(), UNITS, [SPEC])


def test_nothing_quantized_is_no_divergence(setup):
    _, _, m = setup
    assert abs(m.kl({})) < 1e-6


def test_a_unit_s_kl_is_that_of_the_fake_quantized_model(setup):
    """Against lowbit's fake-quantized model of the same plan and torch's own kl_div."""
    handle, ids, m = setup
    unit = UNITS[0]
    mine = m.kl({unit: 0})
    qm = api.quantize(handle, Plan(None, tuple(Rule(n, SPEC) for n in unit)), None)
    with torch.no_grad():
        logq = torch.log_softmax(api.fake_quant_model(handle, qm)(ids).logits.float(), -1)
        logp = torch.log_softmax(handle.load_model(api.runtime())(ids).logits.float(), -1)
    ref = torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    assert mine > 0
    assert mine == pytest.approx(float(ref.mean()), rel=1e-4)
    assert abs(m.kl({})) < 1e-6  # the weights were restored


def test_pairs_cover_within_and_across_blocks(setup):
    _, _, m = setup
    singles, pairs = measure_pairs(m, UNITS)
    assert len(singles) == 3 and len(pairs) == 3
    rows, summary = nonadditivity(singles, pairs)
    assert {r.kind for r in rows} == {"within block", "across blocks"}
    assert summary["all"]["pairs"] == 3
    assert all(v > 0 for v in singles.values())
