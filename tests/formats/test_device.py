"""Formats make their tensors on their input's device: value tables, packing and unpacking
(also straight onto another device), activation fake quantization; bit for bit what they give
outside the check (``tests/helpers/device.py`` for the trick)."""

from __future__ import annotations

import pytest
import torch

from lowbit.formats import FP8_E4M3, FP8_E5M2, IntFormat, NF4Format, quantize_weight
from lowbit.formats.activation import fake_quantize_rows, fake_quantize_tensor
from lowbit.formats.floating import ELEMENTS, all_values
from lowbit.formats.packing import pack, pack_weight, unpack, unpack_weight
from tests.helpers.device import (
    assert_same_weight,
    factories_on_meta,
    registered_formats,
    same_bits,
    tensors_of,
)

FORMATS = registered_formats()
CPU = torch.device("cpu")


def _weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 64, generator=g)


@pytest.mark.parametrize(("fmt", "granularity"), FORMATS)
def test_pack_unpack_round_trip(fmt, granularity):
    qw = quantize_weight(_weight(), fmt, granularity)
    fmt, granularity = qw.fmt, qw.granularity  # as stored (a k-quant's fallback on 64 columns)
    with factories_on_meta():
        packed = pack_weight(qw)
        back = unpack_weight(packed, fmt, granularity, qw.shape)
    assert all(t.device == CPU for t in packed.values())
    reference = pack_weight(qw)
    assert packed.keys() == reference.keys()
    assert all(same_bits(packed[k], reference[k]) for k in packed)
    assert_same_weight(back, unpack_weight(reference, fmt, granularity, qw.shape))
    assert torch.equal(back.dequantize(), qw.dequantize())


@pytest.mark.parametrize(("fmt", "granularity"), FORMATS)
def test_unpack_weight_onto_a_device(fmt, granularity):
    """A loader unpacks CPU tensors straight onto the device it names (meta here)."""
    qw = quantize_weight(_weight(), fmt, granularity)
    back = unpack_weight(pack_weight(qw), qw.fmt, qw.granularity, qw.shape, device="meta")
    assert all(t.device.type == "meta" for t in tensors_of(back))
    W = back.dequantize()
    assert W.device.type == "meta" and W.shape == qw.shape and W.dtype == torch.float32
    assert all(t.device.type == "meta" for t in pack_weight(back).values())  # packed in place


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [1, 3, 4, 6, 8])
def test_pack_and_unpack_stay_on_the_codes_device(bits, signed):
    low = -(2 ** (bits - 1)) if signed else 0
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(low, low + 2**bits, (77,), generator=g, dtype=torch.int16)
    with factories_on_meta():
        packed = pack(codes, bits)
        back = unpack(packed, bits, codes.numel(), signed)
    assert packed.device == back.device == CPU and torch.equal(back, codes)
    on_meta = pack(codes.to("meta"), bits)  # no host round trip: the packed bytes stay there
    assert on_meta.device.type == "meta" and on_meta.shape == packed.shape
    assert unpack(on_meta, bits, codes.numel(), signed).device.type == "meta"


def test_value_tables_on_the_device_asked_for():
    codes = torch.arange(16, dtype=torch.uint8)
    with factories_on_meta():
        nf4 = NF4Format().from_codes(codes)
        fp = {name: f.from_codes(codes) for name, f in ELEMENTS.items()}
    assert torch.equal(nf4, NF4Format().values())
    for name, f in ELEMENTS.items():
        assert fp[name].device == CPU and torch.equal(fp[name], f.values()[:16])
    assert NF4Format().values("meta").device.type == "meta"
    assert FP8_E4M3.values("meta").device.type == "meta"
    assert all_values(4, 3, torch.device("meta")).device.type == "meta"


@pytest.mark.parametrize(
    "fmt", [IntFormat(8), IntFormat(8, False), FP8_E4M3, FP8_E5M2], ids=lambda f: f.name
)
def test_activation_fake_quantization(fmt):
    x = _weight()
    static = [] if isinstance(fmt, IntFormat) and not fmt.symmetric else [1.5]

    def run() -> list[torch.Tensor]:
        thresholds = [None, *static]
        return [fake_quantize_rows(x, fmt)] + [fake_quantize_tensor(x, fmt, t) for t in thresholds]

    with factories_on_meta():
        got = run()
    for y, ref in zip(got, run(), strict=True):
        assert y.device == CPU and torch.equal(y, ref)
