"""The real built-in model (SmolLM2-135M) on real WikiText-2: the spine's quality contracts.

Protocol (small enough for CI): WikiText-2 raw test, ctx 512, the first 8 windows; calibration
16 × 512 windows from wiki.valid.tokens, seed 0; group 64, symmetric (a grid that cannot express
the model's original Q4_1 blocks, see ../shared/data/README.md).
"""

from __future__ import annotations

import math

import pytest
import torch

from lowbit import api
from lowbit.algorithms import GPTQConfig, RTNConfig
from lowbit.evaluation import text as T
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.fakequant import apply_weights
from lowbit.models.quantize import quantize_model
from lowbit.models.saving import load_quantized, save_quantized
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec, uniform_plan
from tests.conftest import require_builtin_model, require_shared_data
from tests.helpers.whole_model import direct_scores

pytestmark = pytest.mark.integration

SPECS = {
    "rtn-w8": LayerSpec(IntFormat(8), PerGroup(64), RTNConfig()),
    "rtn-w4": LayerSpec(IntFormat(4), PerGroup(64), RTNConfig()),
    "gptq-w4": LayerSpec(IntFormat(4), PerGroup(64), GPTQConfig()),
    "gptq-w3": LayerSpec(IntFormat(3), PerGroup(64), GPTQConfig()),
}


@pytest.fixture(scope="module")
def setting():
    require_builtin_model()
    data = require_shared_data()
    handle = resolve_model("smollm2-135m")
    tok = handle.load_tokenizer()
    test_ids = T.tokenize(tok, T.load_text(T.FileText(data / "wikitext-2-raw" / "wiki.test.raw")))
    valid = T.load_text(T.FileText(data / "wikitext-2" / "wiki.valid.tokens"))
    windows = T.eval_windows(test_ids, 512, 8, "wiki.test.raw")
    windows = api.Windows(windows, {"fingerprint": "wiki.test.raw-8x512", "selection": "first"})
    calib = T.calibration_windows(T.tokenize(tok, valid), 512, 16, 0, "wiki.valid.tokens")
    return handle, windows, calib


@pytest.fixture(scope="module")
def quantized(setting):
    handle, _, calib = setting
    return {name: quantize_model(handle, uniform_plan(spec), calib) for name, spec in SPECS.items()}


@pytest.fixture(scope="module")
def results(setting, quantized, tmp_path_factory):
    """Layer-wise, one candidate after another, against the cached reference."""
    handle, windows, _ = setting
    cands = {n: api.quantized_view(q, n) for n, q in quantized.items()}
    cache = tmp_path_factory.mktemp("reference") / "ref.lbref"
    return api.evaluate(api.model_view(handle), cands, windows, cache=cache)


def test_reference_perplexity_matches_an_independent_evaluator(setting, results):
    handle, windows, _ = setting
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(handle.path, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows.ids:
            logits = model(w[None]).logits[0, :-1]
            lp = torch.log_softmax(logits.double(), -1)
            nll -= lp.gather(1, w[1:, None]).sum().item()
            count += w.numel() - 1
    independent = math.exp(nll / count)
    assert f"{results['reference'].perplexity:.4g}" == f"{independent:.4g}"


def test_w8_is_within_half_a_percent_of_fp32(results):
    assert results["rtn-w8"].perplexity == pytest.approx(results["reference"].perplexity, rel=0.005)


def test_gptq_w4_beats_rtn_w4(results):
    assert results["gptq-w4"].kl["mean"] < results["rtn-w4"].kl["mean"]
    assert results["gptq-w4"].perplexity < results["rtn-w4"].perplexity


def test_w3_is_worse_than_w4(results):
    assert results["gptq-w3"].kl["mean"] > results["gptq-w4"].kl["mean"]
    assert results["gptq-w3"].perplexity > results["gptq-w4"].perplexity


def test_bits_per_weight_are_honest(setting, quantized):
    from lowbit.models.footprint import footprint

    handle = setting[0]
    for name, bits in (("rtn-w4", 4.25), ("gptq-w3", 3.25), ("rtn-w8", 8.25)):
        fp = footprint(handle, quantized[name])
        assert fp.bits_per_weight_linear == pytest.approx(bits)
        assert "model.embed_tokens.weight" in fp.full_precision


@pytest.mark.slow
def test_save_load_gives_identical_logits(setting, quantized, tmp_path):
    handle, windows, _ = setting
    qm = quantized["gptq-w4"]
    out = save_quantized(qm, tmp_path / "gptq-w4", {})
    loaded, _, _ = load_quantized(out)
    evaluated = apply_weights(handle.load_model(), qm.weights)
    with torch.inference_mode():
        assert torch.equal(loaded(windows.ids[:1]).logits, evaluated(windows.ids[:1]).logits)


def test_layerwise_cached_evaluation_equals_the_direct_one(setting, quantized, tmp_path):
    """The real vocabulary (49,152): perplexity, top-1 agreement and Δp from the layer-wise
    evaluation against the cached reference equal, bit for bit, scoring two whole models held
    in memory; the KL divergence within 1e-4 relative (the cache's compact encoding)."""
    handle, eight, _ = setting
    windows = api.Windows(eight.ids[:2], {"fingerprint": "wiki.test.raw-2x512", "selection": "x"})
    view = api.quantized_view(quantized["gptq-w4"], "gptq-w4")
    cached = api.evaluate(api.model_view(handle), {"q": view}, windows, cache=tmp_path / "r")["q"]
    q_model = apply_weights(handle.load_model(), quantized["gptq-w4"].weights)
    direct = direct_scores(handle.load_model(), q_model, windows.ids)
    assert cached.perplexity == direct.perplexity
    assert cached.top1_agreement == direct.top1_agreement
    assert cached.delta_p == direct.delta_p
    assert cached.kl["mean"] == pytest.approx(direct.kl["mean"], rel=1e-4)
    for key in ("median", "p90", "p99", "max"):
        assert cached.kl[key] == pytest.approx(direct.kl[key], rel=1e-3)
