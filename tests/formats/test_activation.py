"""Activation fake quantization against hand-computed values and torch's FP8 cast."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import FP8_E4M3, IntFormat, NF4Format
from lowbit.formats.activation import (
    check_activation_format,
    fake_quantize_rows,
    fake_quantize_tensor,
)


def test_int8_per_token_hand_computed():
    x = torch.tensor([[1.27, -0.5, 0.004, 0.0], [-254.0, 100.0, 1.0, 0.6]])
    # row 0: s = 1.27 / 127 = 0.01 → codes 127, -50, 0, 0; row 1: s = 2 → -127, 50, 0 (0.5 rounds
    # to even), 0 (0.3)
    expected = torch.tensor([[1.27, -0.5, 0.0, 0.0], [-254.0, 100.0, 0.0, 0.0]])
    out = fake_quantize_rows(x, IntFormat(8))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_int4_asymmetric_row():
    x = torch.tensor([[0.0, 1.5, 3.0, 0.7]])
    # [min(0,0), 3] over 15 steps: s = 0.2, z = 0; 0.7 / 0.2 = 3.5 → 4 (round half to even) → 0.8
    out = fake_quantize_rows(x, IntFormat(4, symmetric=False))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.6, 3.0, 0.8]]), rtol=0, atol=1e-6)


def test_fp8_rows_equal_torch_cast():
    torch.manual_seed(0)
    x = torch.randn(16, 64) * torch.logspace(-2, 2, 16)[:, None]
    scale = x.abs().amax(-1, keepdim=True) / 448.0
    ref = (x / scale).to(torch.float8_e4m3fn).float() * scale
    assert torch.equal(fake_quantize_rows(x, FP8_E4M3), ref)


def test_static_threshold_saturates():
    x = torch.tensor([0.5, -3.0, 1.0])
    out = fake_quantize_tensor(x, IntFormat(8), threshold=1.27)  # s = 0.01
    torch.testing.assert_close(out, torch.tensor([0.5, -1.28, 1.0]), rtol=0, atol=1e-6)


def test_dynamic_per_tensor_uses_global_absmax():
    x = torch.tensor([[1.0, 0.0], [0.0, -127.0]])
    out = fake_quantize_tensor(x, IntFormat(8))
    assert torch.equal(out, x)


def test_zero_rows_stay_zero():
    assert torch.equal(fake_quantize_rows(torch.zeros(2, 3), IntFormat(8)), torch.zeros(2, 3))


def test_non_scalar_formats_refused():
    with pytest.raises(ConfigError, match="cannot quantize activations"):
        check_activation_format(NF4Format(), "plan activations")
