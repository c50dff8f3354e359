"""NVFP4: global scale absmax / (448·6), FP8 E4M3 block scales over 16 columns, FP4 elements;
a hand-computed tensor and the honest bits per weight."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import FP4_E2M1, FP8_E4M3, NVFP4Format, PerGroup, quantize_weight


def test_hand_computed_tensor():
    W = torch.zeros(1, 32)
    W[0, :2] = torch.tensor([1344.0, 300.0])  # block 0: absmax 1344 = the tensor's
    W[0, 16:18] = torch.tensor([10.0, -1.0])  # block 1: absmax 10
    qw = quantize_weight(W, NVFP4Format(), PerGroup(16))
    # global = 1344 / 2688 = 0.5; block scales 1344 / 3 = 448 and 10 / 3 = 3.33 → 3.25 (E4M3)
    assert qw.tensor_scale.dtype == torch.float32 and qw.tensor_scale.item() == 0.5
    assert qw.scale.dtype == torch.float8_e4m3fn
    assert qw.scale.float().tolist() == [[448.0, 3.25]]
    # steps 224 and 1.625: 1344/224 = 6, 300/224 = 1.34 → 1.5; 10/1.625 = 6.15 → 6 (saturated),
    # -1/1.625 = -0.62 → -0.5
    expected = torch.zeros(1, 32)
    expected[0, :2] = torch.tensor([6 * 224.0, 1.5 * 224])
    expected[0, 16:18] = torch.tensor([6 * 1.625, -0.5 * 1.625])
    assert torch.equal(qw.dequantize(), expected)
    assert qw.codes[0, :2].tolist() == [0b0111, 0b0011]
    assert qw.codes[0, 16:18].tolist() == [0b0111, 0b1001]


def test_random_tensor_against_the_formula():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 64, generator=g) * torch.logspace(-2, 1, 8)[:, None]
    qw = quantize_weight(W, NVFP4Format(), PerGroup(16))
    global_scale = W.abs().max() / (448 * 6)
    assert qw.tensor_scale.item() == pytest.approx(float(global_scale), rel=1e-7)
    blocks = W.reshape(8, 4, 16)
    block_scale = (blocks.abs().amax(-1) / (6 * qw.tensor_scale)).to(torch.float8_e4m3fn)
    assert torch.equal(qw.scale.view(torch.uint8), block_scale.view(torch.uint8))
    step = block_scale.float()[..., None] * qw.tensor_scale
    expected = (FP4_E2M1.round(blocks / step) * step).reshape(8, 64)
    assert torch.equal(qw.dequantize(), expected)
    assert FP8_E4M3.max_value == 448.0


@pytest.mark.parametrize(("out_f", "in_f"), [(8, 64), (4096, 4096), (3, 48)])
def test_bits_per_weight(out_f, in_f):
    bpw = 4 + 8 / 16 + 32 / (out_f * in_f)
    assert NVFP4Format().bits_per_weight(in_f, PerGroup(16), out_f) == bpw
    if out_f < 100:
        qw = quantize_weight(torch.randn(out_f, in_f), NVFP4Format(), PerGroup(16))
        assert qw.bits_per_weight() == pytest.approx(bpw, rel=1e-12)


def test_all_zero_tensor():
    qw = quantize_weight(torch.zeros(2, 32), NVFP4Format(), PerGroup(16))
    assert torch.equal(qw.dequantize(), torch.zeros(2, 32))


def test_block_size_must_be_16():
    with pytest.raises(ConfigError, match=r"nvfp4 uses blocks of 16.*PerGroup\(16\)"):
        quantize_weight(torch.randn(2, 64), NVFP4Format(), PerGroup(32))
