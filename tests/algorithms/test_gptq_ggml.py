"""GPTQ into GGML blocks: on correlated inputs it lowers the layer's output error below RTN in
the same type, its weight is stored as blocks gguf reads back bit for bit, and the sweep runs
over the sub-blocks (each sub-block's scale and min chosen anew under the super-block's d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from lowbit.algorithms import ActOrder, GPTQConfig, gptq_quantize, rtn_quantize
from lowbit.algorithms.gptq import gptq_factor
from lowbit.algorithms.gptq_ggml import sweep_granularity
from lowbit.export.gguf_kblocks import ggml_blocks
from lowbit.formats import GGMLFormat, PerGroup

KINDS = ["q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0"]


def _problem(in_f: int = 512, out_f: int = 32, seed: int = 0):
    """W (out, in) and correlated inputs X (n, in) of unequal column scales; H = XᵀX / n."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g) * 0.05
    n = 2 * in_f
    X = torch.randn(n, 24, generator=g) @ torch.randn(24, in_f, generator=g)
    X = (X + 0.3 * torch.randn(n, in_f, generator=g)) * torch.exp(
        0.5 * torch.randn(in_f, generator=g)
    )
    return W, X, X.T @ X / n


def _output_error(X, W, W_hat) -> float:
    return float(((X.double() @ (W.double() - W_hat.double()).T) ** 2).sum())


def _read_back(qw) -> np.ndarray:
    data = ggml_blocks(qw.fmt.kind, qw.codes.numpy(), qw.scale.numpy())
    return dequantize(data, GGMLQuantizationType[qw.fmt.kind.upper()])


FORMATS = [GGMLFormat(k) for k in KINDS] + [
    GGMLFormat(k, rule="cover") for k in ("q4_k", "q5_k", "q6_k")
]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.kind}-{f.rule}")
def test_gptq_beats_rtn_in_the_same_blocks(fmt):
    """Under either k-quant rule (the sweep refreshes each sub-block by the format's own rule)."""
    gran = PerGroup(fmt.spec.block)
    W, X, H = _problem()
    rtn = rtn_quantize(W, fmt, gran)
    out = gptq_quantize(W, H, fmt, gran, GPTQConfig())
    assert out.weight.fmt == fmt == rtn.fmt and out.weight.granularity == gran
    ratio = _output_error(X, W, out.weight.dequantize()) / _output_error(X, W, rtn.dequantize())
    assert ratio < 0.8, ratio
    assert np.array_equal(_read_back(out.weight), out.weight.dequantize().numpy())


@pytest.mark.parametrize("act_order", [ActOrder.STATIC, ActOrder.GROUP_AWARE])
def test_gptq_q4_k_with_act_order_stays_exact(act_order):
    W, X, H = _problem(seed=1)
    fmt, gran = GGMLFormat("q4_k"), PerGroup(256)
    out = gptq_quantize(W, H, fmt, gran, GPTQConfig(act_order=act_order))
    rtn = rtn_quantize(W, fmt, gran)
    assert out.weight.perm is None
    assert _output_error(X, W, out.weight.dequantize()) < _output_error(X, W, rtn.dequantize())
    assert np.array_equal(_read_back(out.weight), out.weight.dequantize().numpy())


def test_gptq_falls_back_like_rtn():
    """576 columns: Q4_K's rows fall back to Q5_0 for GPTQ as for RTN."""
    W, X, H = _problem(in_f=576, seed=2)
    fmt, gran = GGMLFormat("q4_k"), PerGroup(256)
    out = gptq_quantize(W, H, fmt, gran, GPTQConfig())
    assert out.weight.fmt == GGMLFormat("q5_0") and out.weight.granularity == PerGroup(32)
    rtn = rtn_quantize(W, fmt, gran)
    assert _output_error(X, W, out.weight.dequantize()) < _output_error(X, W, rtn.dequantize())
    assert np.array_equal(_read_back(out.weight), out.weight.dequantize().numpy())


def test_the_sweep_groups_are_sub_blocks_and_a_shared_factor_fits():
    W, _, H = _problem(seed=3)
    fmt, gran = GGMLFormat("q6_k"), PerGroup(256)
    assert sweep_granularity(fmt, gran, 512) == PerGroup(16)
    assert sweep_granularity(GGMLFormat("q4_k"), gran, 512) == PerGroup(32)
    factor = gptq_factor(H, sweep_granularity(fmt, gran, 512), GPTQConfig())
    shared = gptq_quantize(W, H, fmt, gran, GPTQConfig(), factor)
    alone = gptq_quantize(W, H, fmt, gran, GPTQConfig())
    assert torch.equal(shared.weight.codes, alone.weight.codes)
    assert torch.equal(shared.weight.scale, alone.weight.scale)
