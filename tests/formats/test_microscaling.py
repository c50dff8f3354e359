"""Microscaling (OCP MX v1.0): the E8M0 shared exponent per the spec, hand-computed blocks for
MXFP4/MXFP8/MXINT8, E8M0 bytes, bits per weight and the block-size check."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import FORMATS, MXFormat, PerChannel, PerGroup, quantize_weight
from lowbit.formats.microscaling import e8m0_decode, e8m0_encode, shared_exponent

MX_NAMES = ["mxfp8", "mxfp8_e5m2", "mxfp6", "mxfp6_e3m2", "mxfp4", "mxint8"]
# emax_elem of each element type, OCP MX v1.0 table 1
EMAX = {"mxfp8": 8, "mxfp8_e5m2": 15, "mxfp6": 2, "mxfp6_e3m2": 4, "mxfp4": 2, "mxint8": 0}


def _block() -> torch.Tensor:
    """Two blocks of 32: one with absmax 47.9 (floor(log2) = 5), one all zero."""
    W = torch.zeros(1, 64)
    W[0, :6] = torch.tensor([40.0, 13.0, -2.2, 0.9, 47.9, -47.9])
    return W


@pytest.mark.parametrize("name", MX_NAMES)
def test_emax_elem(name):
    assert FORMATS.get(name)().emax_elem == EMAX[name]


@pytest.mark.parametrize(
    ("absmax", "emax", "exponent"),
    [
        (1.0, 2, -2),
        (1.5, 2, -2),
        (2.0, 2, -1),
        (0.75, 2, -3),
        (47.9, 2, 3),
        (448.0, 8, 0),
        (449.0, 8, 0),
        (512.0, 8, 1),
        (6.0, 0, 2),
        (2.0**-140, 2, -127),  # below E8M0's range: clamped
        (0.0, 8, -127),  # an all-zero block: any scale; the smallest
        (3.0e38, 0, 127),
    ],
)
def test_shared_exponent_is_floor_log2_minus_emax(absmax, emax, exponent):
    assert shared_exponent(torch.tensor([absmax]), emax).item() == exponent
    if 0 < absmax < 3e38 and exponent > -127:
        assert exponent == math.floor(math.log2(absmax)) - emax


def test_e8m0_bytes():
    exps = torch.tensor([-127, -1, 0, 1, 127])
    assert e8m0_encode(exps).tolist() == [0, 126, 127, 128, 254]
    decoded = e8m0_decode(torch.tensor([0, 126, 127, 128, 254, 255], dtype=torch.uint8))
    assert decoded[:5].tolist() == [2.0**-127, 0.5, 1.0, 2.0, 2.0**127]
    assert math.isnan(decoded[5].item())  # 0xFF is NaN


@pytest.mark.parametrize(
    ("name", "scale_byte", "codes", "values"),
    [
        # X = 2^(5 - 2) = 8: 40/8 = 5 ties to 4 (even), 13/8 → 1.5, -2.2/8 → -0.5, 0.9/8 → 0,
        # ±47.9/8 → ±6; FP4 codes are S.EE.M bit patterns
        ("mxfp4", 130, [0b0110, 0b0011, 0b1001, 0, 0b0111, 0b1111], [32, 12, -4, 0, 48, -48]),
        # X = 2^(5 - 8) = 1/8: 320 = 1.25·2^8 (S.EEEE.MMM = 0.1111.010) and 104 = 1.625·2^6
        # (0.1101.101) exact, -17.6 → -18 = -1.125·2^4 (1.1011.001), 7.2 → 7 = 1.75·2^2
        # (0.1001.110), ±383.2 → ±384 = ±1.5·2^8 (·.1111.100)
        ("mxfp8", 124, [0x7A, 0x6D, 0xD9, 0x4E, 0x7C, 0xFC], [40, 13, -2.25, 0.875, 48, -48]),
        # X = 2^5 = 32, elements k/64: 80, 26, -4.4 → -4, 1.8 → 2, ±95.8 → ±96
        ("mxint8", 132, [80, 26, -4, 2, 96, -96], [40, 13, -2, 1, 48, -48]),
    ],
)
def test_hand_computed_block(name, scale_byte, codes, values):
    qw = quantize_weight(_block(), FORMATS.get(name)(), PerGroup(32))
    assert qw.scale.dtype == torch.uint8
    assert qw.scale.tolist() == [[scale_byte, 0]]  # the zero block gets 2^-127
    assert qw.codes[0, :6].tolist() == codes
    assert qw.codes[0, 6:].abs().sum() == 0
    expected = torch.zeros(1, 64)
    expected[0, :6] = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(qw.dequantize(), expected)


@pytest.mark.parametrize("name", MX_NAMES)
def test_blocks_against_a_direct_computation(name):
    """x̂ = X · element(x / X) with X = 2^(floor(log2 absmax) - emax) from Python's math."""
    fmt = FORMATS.get(name)()
    g = torch.Generator().manual_seed(len(name))
    W = torch.randn(4, 96, generator=g) * torch.logspace(-4, 2, 4)[:, None]
    qw = quantize_weight(W, fmt, PerGroup(32))
    expected = torch.empty_like(W)
    for r in range(4):
        for b in range(3):
            block = W[r, 32 * b : 32 * (b + 1)]
            X = 2.0 ** (math.floor(math.log2(float(block.abs().max()))) - EMAX[name])
            if fmt.element_format is None:
                element = (block / X * 64).round().clamp(-127, 127) / 64
            else:
                element = fmt.element_format.round(block / X)
            expected[r, 32 * b : 32 * (b + 1)] = element * X
    assert torch.equal(qw.dequantize(), expected)


@pytest.mark.parametrize(
    ("name", "bpw"),
    [
        ("mxfp4", 4 + 8 / 32),
        ("mxfp6", 6 + 8 / 32),
        ("mxfp6_e3m2", 6 + 8 / 32),
        ("mxfp8", 8 + 8 / 32),
        ("mxint8", 8 + 8 / 32),
    ],
)
def test_bits_per_weight(name, bpw):
    fmt = FORMATS.get(name)()
    assert fmt.bits_per_weight(4096, PerGroup(32), 11008) == bpw
    assert quantize_weight(torch.randn(8, 128), fmt, PerGroup(32)).bits_per_weight() == bpw


def test_a_short_last_block_is_still_one_scale():
    fmt = MXFormat("fp4_e2m1")
    assert fmt.bits_per_weight(48, PerGroup(32), 2) == 4 + 2 * 8 / 48
    qw = quantize_weight(torch.randn(2, 48), fmt, PerGroup(32))
    assert qw.scale.shape == (2, 2) and qw.bits_per_weight() == 4 + 2 * 8 / 48


@pytest.mark.parametrize("granularity", [PerGroup(64), PerGroup(16), PerChannel()])
def test_block_size_other_than_32_names_the_format_and_the_fix(granularity):
    with pytest.raises(ConfigError, match=r"mxfp4 uses blocks of 32.*OCP MX.*PerGroup\(32\)"):
        quantize_weight(torch.randn(2, 64), MXFormat("fp4_e2m1"), granularity)
    with pytest.raises(ConfigError, match="mxfp4 uses blocks of 32"):
        MXFormat("fp4_e2m1").bits_per_weight(64, granularity, 2)


def test_unknown_element():
    with pytest.raises(ConfigError, match="'fp5'.*known: 'fp8_e4m3'"):
        MXFormat("fp5")


@pytest.mark.parametrize("name", MX_NAMES)
def test_names_round_trip(name):
    assert FORMATS.get(name)().name == name
