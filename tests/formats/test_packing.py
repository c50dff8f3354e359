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
