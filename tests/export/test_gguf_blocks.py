"""GGML blocks built from lowbit's codes, read back by the gguf library's own dequantizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from lowbit.algorithms import rtn_quantize
from lowbit.export import gguf_blocks
from lowbit.formats import IntFormat, PerGroup


def _qw(bits: int, sym: bool, rows: int = 8, cols: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 0.05
    W[0, :32] = 0.0  # an all-zero block
    return rtn_quantize(W, IntFormat(bits, sym), PerGroup(32))


def _ref(data: np.ndarray, kind: GGMLQuantizationType) -> torch.Tensor:
    return torch.from_numpy(dequantize(data, kind).astype(np.float32))


def test_q4_0_dequantizes_bit_exactly():
    qw = _qw(4, True)
    data = gguf_blocks.q4_0(qw.codes.numpy(), qw.scale.numpy())
    assert data.shape == (8, 3 * 18) and data.dtype == np.uint8
    assert torch.equal(_ref(data, GGMLQuantizationType.Q4_0), qw.dequantize())


def test_q8_0_dequantizes_bit_exactly():
    qw = _qw(8, True)
    data = gguf_blocks.q8_0(qw.codes.numpy(), qw.scale.numpy())
    assert data.shape == (8, 3 * 34)
    assert torch.equal(_ref(data, GGMLQuantizationType.Q8_0), qw.dequantize())


def test_q4_1_within_the_reported_fp16_minimum_error():
    qw = _qw(4, False)
    data, err = gguf_blocks.q4_1(qw.codes.numpy(), qw.scale.numpy(), qw.zero.numpy())
    assert data.shape == (8, 3 * 20)
    diff = (_ref(data, GGMLQuantizationType.Q4_1) - qw.dequantize()).abs().max().item()
    assert diff <= err + 1e-12
    assert 0 < err <= qw.scale.max().item() * 15 * 2**-11  # half an fp16 ulp of |m| ≤ 15·s


def test_a_block_needs_whole_groups_of_32():
    with pytest.raises(ValueError, match="32-wide blocks"):
        gguf_blocks.q4_0(np.zeros((2, 40), np.int8), np.ones((2, 2), np.float32))


@pytest.mark.parametrize(("n_head", "n_kv"), [(4, 4), (4, 2), (9, 3)])
def test_row_permutation_is_undone_by_transformers(n_head, n_kv):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    head_dim = 8
    W = np.arange(n_kv * head_dim * 5, dtype=np.float32).reshape(n_kv * head_dim, 5)
    permuted = gguf_blocks.permute_rows(W, n_kv)
    assert not np.array_equal(permuted, W)
    proc = LlamaTensorProcessor(config={})
    back = proc._reverse_permute_weights(permuted, n_kv, n_kv)
    assert np.array_equal(back, W)


def test_rtn_int4_g32_agrees_with_llama_cpps_own_q4_0():
    """The extreme scale rule is ggml's ``quantize_row_q4_0``: quantized by the gguf library's
    reference, the same weights get the same block scales up to fp16 rounding (ggml rounds to
    nearest, lowbit up, so that no weight leaves the grid) and the same codes except where that
    rounding moves a weight across a rounding boundary (≥ 99.9% equal, the rest one code apart)."""
    from gguf.quants import quantize

    W = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)) * 0.05
    ours = rtn_quantize(W, IntFormat(4), PerGroup(32))
    blocks = quantize(W.numpy(), GGMLQuantizationType.Q4_0).reshape(64, 32, 18)
    d = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
    theirs = _ref(blocks.reshape(64, -1), GGMLQuantizationType.Q4_0)
    codes = torch.round(theirs / d.repeat_interleave(32, dim=1))
    assert torch.all((ours.scale.float() - d).abs() <= d.abs() * 2**-10)
    assert torch.all(torch.sign(ours.scale.float()) == torch.sign(d))
    equal = ours.codes.float() == codes
    assert float(equal.float().mean()) >= 0.999
    assert torch.all((ours.codes.float() - codes).abs() <= 1)


def test_half_step_rule_is_not_q4_0():
    """The GPTQ reference's grid (absmax / 7.5) differs from ggml's Q4_0 on most weights."""
    from gguf.quants import quantize

    W = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)) * 0.05
    half = rtn_quantize(W, IntFormat(4, scale_rule="half-step"), PerGroup(32)).dequantize()
    q4_0 = _ref(quantize(W.numpy(), GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0)
    assert float((half == q4_0).float().mean()) < 0.2
