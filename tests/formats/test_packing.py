"""Sub-byte packing: exact round trips, the documented little-endian layout, honest sizes."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats import IntFormat
from lowbit.formats.packing import pack, packed_nbytes, unpack

BITS = [2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("count", [1, 7, 1001])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_round_trip_over_the_full_code_range(bits, signed, count):
    fmt = IntFormat(bits, symmetric=signed)
    g = torch.Generator().manual_seed(bits * 10 + count)
    codes = torch.randint(fmt.qmin, fmt.qmax + 1, (count,), generator=g, dtype=torch.int16)
    codes[0] = fmt.qmin
    codes[-1] = fmt.qmax if count > 1 else codes[-1]
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (count * bits + 7) // 8 == packed_nbytes(count, bits)
    out = unpack(packed, bits, count, signed)
    assert out.dtype == torch.int16
    assert torch.equal(out, codes)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", BITS)
def test_every_code_survives(bits, signed):
    fmt = IntFormat(bits, symmetric=signed)
    codes = torch.arange(fmt.qmin, fmt.qmax + 1, dtype=torch.int16)
    assert torch.equal(unpack(pack(codes, bits), bits, codes.numel(), signed), codes)


def test_two_dimensional_codes_are_packed_row_major():
    codes = torch.arange(12, dtype=torch.int16).reshape(3, 4) % 8
    flat = unpack(pack(codes, 3), 3, 12, signed=False)
    assert torch.equal(flat.reshape(3, 4), codes)


@pytest.mark.parametrize(
    ("codes", "bits", "expected"),
    [
        ([1, 2, 3], 2, [0b00111001]),  # code i at bits 2i..2i+1, least significant first
        ([1, 2, 3, 0, 3], 2, [0b00111001, 0b00000011]),
        ([-1], 4, [0x0F]),  # two's complement in 4 bits
        ([-8, 7], 4, [0x78]),
        ([5, 6, 7], 3, [0b11110101, 0b00000001]),  # 101, 110, 111 across a byte boundary
        ([255, 0, 128], 8, [255, 0, 128]),
        ([-128, -1], 8, [128, 255]),
    ],
)
def test_little_endian_layout(codes, bits, expected):
    packed = pack(torch.tensor(codes, dtype=torch.int16), bits)
    assert packed.tolist() == expected


@pytest.mark.parametrize(
    ("count", "bits", "nbytes"),
    [(0, 4, 0), (1, 2, 1), (4, 2, 1), (5, 2, 2), (3, 3, 2), (8, 3, 3), (1001, 5, 626), (7, 8, 7)],
)
def test_packed_size(count, bits, nbytes):
    assert packed_nbytes(count, bits) == nbytes


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_chunked_packing_crosses_step_boundaries(bits, monkeypatch):
    import lowbit.formats.packing as packing

    monkeypatch.setattr(packing, "_CHUNK", 16)
    fmt = IntFormat(bits, symmetric=True)
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(fmt.qmin, fmt.qmax + 1, (1001,), generator=g, dtype=torch.int16)
    packed = packing.pack(codes, bits)
    assert packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(packing.unpack(packed, bits, 1001, signed=True), codes)


# --- whole weights of every format ------------------------------------------------------------

ALL_FORMATS = [
    pytest.param("int", (4,), "g", id="int4"),
    pytest.param("int", (3, False), "g", id="uint3"),
    pytest.param("fp8_e4m3", (), "g", id="fp8_e4m3"),
    pytest.param("fp8_e5m2", (), "c", id="fp8_e5m2"),
    pytest.param("fp6_e3m2", (), "g", id="fp6_e3m2"),
    pytest.param("fp6_e2m3", (), "t", id="fp6_e2m3"),
    pytest.param("fp4_e2m1", (), "g", id="fp4_e2m1"),
    pytest.param("nf4", (), "g", id="nf4"),
    pytest.param("lut", (3,), "c", id="lut3"),
    pytest.param("mxfp8", (), "mx", id="mxfp8"),
    pytest.param("mxfp6", (), "mx", id="mxfp6"),
    pytest.param("mxfp4", (), "mx", id="mxfp4"),
    pytest.param("mxint8", (), "mx", id="mxint8"),
    pytest.param("nvfp4", (), "nv", id="nvfp4"),
]


@pytest.mark.parametrize(("name", "args", "gran"), ALL_FORMATS)
def test_every_format_round_trips_through_its_packed_tensors(name, args, gran):
    from lowbit.formats import FORMATS, PerChannel, PerGroup, PerTensor, quantize_weight
    from lowbit.formats.packing import pack_weight, unpack_weight

    granularity = {
        "g": PerGroup(32),
        "c": PerChannel(),
        "t": PerTensor(),
        "mx": PerGroup(32),
        "nv": PerGroup(16),
    }[gran]
    fmt = FORMATS.get(name)(*args)
    W = torch.randn(6, 96, generator=torch.Generator().manual_seed(len(name)))
    qw = quantize_weight(W, fmt, granularity)
    packed = pack_weight(qw)
    assert packed["codes"].dtype == torch.uint8
    assert packed["codes"].numel() == packed_nbytes(6 * 96, fmt.bits)  # e.g. FP6: 3 bytes per 4
    back = unpack_weight(packed, fmt, granularity, (6, 96))
    assert torch.equal(back.codes, qw.codes) and back.codes.dtype == qw.codes.dtype
    assert torch.equal(back.scale.view(torch.uint8), qw.scale.view(torch.uint8))
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert back.n_bits() == qw.n_bits()
    stored = sum(t.numel() * t.element_size() * 8 for t in packed.values())
    padding = (-6 * 96 * fmt.bits) % 8  # the last byte of codes (and of zero points)
    padding += 0 if qw.zero is None else (-qw.zero.numel() * fmt.bits) % 8
    assert stored == qw.n_bits() + padding


def test_fp4_codes_are_two_nibbles_per_byte_first_in_the_low_nibble():
    from lowbit.formats import FP4_E2M1
    from lowbit.formats.packing import pack_codes, unpack_codes

    codes = FP4_E2M1.to_codes(torch.tensor([0.5, -6.0, 3.0, 0.0]))  # 0x1, 0xF, 0x5, 0x0
    assert codes.tolist() == [0x1, 0xF, 0x5, 0x0]
    assert pack_codes(codes, FP4_E2M1).tolist() == [0xF1, 0x05]
    assert torch.equal(unpack_codes(pack_codes(codes, FP4_E2M1), FP4_E2M1, 4), codes)


def test_fp6_codes_are_four_values_in_three_bytes():
    from lowbit.formats import FP6_E2M3
    from lowbit.formats.packing import pack_codes, unpack_codes

    codes = torch.tensor([0b000001, 0b100000, 0b111111, 0b010101], dtype=torch.uint8)
    # little-endian stream: 000001 | 100000 | 111111 | 010101 (each least significant bit first)
    # byte 0 = bits 0-7 = 00 000001 → low 6 bits code 0, top 2 bits = low 2 of code 1 (00)
    assert pack_codes(codes, FP6_E2M3).tolist() == [0b00000001, 0b11111000, 0b01010111]
    assert torch.equal(unpack_codes(pack_codes(codes, FP6_E2M3), FP6_E2M3, 4), codes)


def test_mxint8_codes_stay_signed():
    from lowbit.formats import MXFormat
    from lowbit.formats.packing import pack_codes, unpack_codes

    fmt = MXFormat("int8")
    codes = torch.tensor([-127, -1, 0, 1, 127], dtype=torch.int8)
    assert pack_codes(codes, fmt).tolist() == [129, 255, 0, 1, 127]
    assert torch.equal(unpack_codes(pack_codes(codes, fmt), fmt, 5), codes)
