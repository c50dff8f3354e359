"""Sensitivity and allocation on the real built-in model and real WikiText-2 calibration text.

Protocol (small enough for CI): 8 × 512 calibration windows from wiki.valid.tokens (seed 0);
RTN INT2/3/4/8 group 64 probed on the first and the last block; the measured KL on the first
2 windows cut to 128 tokens.
"""

from __future__ import annotations

import copy

import pytest

from lowbit.algorithms import RTNConfig, rtn_quantize
from lowbit.allocation import AvgBits, build_problem, solve_exact
from lowbit.evaluation import text as T
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.probe import ProbeConfig, measure
from tests.conftest import require_builtin_model, require_shared_data
from tests.helpers.whole_model import whole_model_kl

pytestmark = pytest.mark.integration

MENU = tuple(LayerSpec(IntFormat(b), PerGroup(64), RTNConfig()) for b in (2, 3, 4, 8))
CFG = ProbeConfig(probe_windows=2, probe_ctx=128, fisher_windows=4, fisher_ctx=64, blocks=(0, 29))
RUNTIME = RuntimeConfig(dtype="float32")


@pytest.fixture(scope="module")
def measured():
    require_builtin_model()
    data = require_shared_data()
    handle = resolve_model("smollm2-135m")
    valid = T.load_text(T.FileText(data / "wikitext-2" / "wiki.valid.tokens"))
    ids = T.tokenize(handle.load_tokenizer(), valid)
    calib = T.calibration_windows(ids, 512, 8, 0, "wiki.valid.tokens")
    return handle, calib, measure(handle, MENU, calib, CFG, runtime=resolve_runtime(RUNTIME))


def test_only_the_asked_blocks_are_probed(measured):
    _, _, table = measured
    probed = {table.layer(name).block for name, _ in table.entries}
    assert probed == {0, 29}
    assert len(table.entries) == 2 * 7 * len(MENU)
    assert not table.is_complete()


def test_more_bits_never_hurt_on_the_real_model(measured):
    _, _, table = measured
    for name in {name for name, _ in table.entries}:
        kl = [table.entry(name, s).kl for s in range(len(MENU))]
        hess = [table.entry(name, s).hessian for s in range(len(MENU))]
        assert kl[0] > kl[1] > kl[2] > kl[3] >= 0.0, (name, kl)
        assert hess[0] > hess[1] > hess[2] > hess[3] > 0.0, (name, hess)


def test_proxies_rank_layers_like_the_measurement(measured):
    _, _, table = measured
    # across layers and specs together (the full bench: Hessian 0.81, Fisher 0.95)
    hessian = table.rank_correlation("hessian")["all"]
    fisher = table.rank_correlation("fisher")["all"]
    assert hessian > 0.6 and fisher > 0.75, (hessian, fisher)


def test_measured_kl_equals_an_independent_evaluation(measured):
    handle, calib, table = measured
    model = handle.load_model(resolve_runtime(RUNTIME))
    name = "model.layers.0.mlp.down_proj"
    changed = copy.deepcopy(model)
    layer = changed.get_submodule(name)
    layer.weight.data = rtn_quantize(layer.weight.data, IntFormat(3), PerGroup(64)).dequantize()
    probe = calib[: CFG.probe_windows, : CFG.probe_ctx]
    ref = whole_model_kl(model, changed, probe)
    assert table.entry(name, 1).kl == pytest.approx(ref, rel=1e-3)


def test_allocation_on_the_probed_layers_spends_bits_where_they_help(measured):
    _, _, table = measured
    names = {name for name, _ in table.entries}
    table.layers = tuple(x for x in table.layers if x.name in names)
    problem = build_problem(table, "kl")
    for budget in (3.5, 4.5):
        exact = solve_exact(problem, AvgBits(budget))
        assert exact.bits <= AvgBits(budget).linear_bits(problem)
        uniform_loss = sum(problem.loss[(n, 2 if budget > 4.25 else 1)] for n in names)
        assert exact.loss < uniform_loss
