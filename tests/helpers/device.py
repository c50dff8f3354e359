"""Device-correctness on a CPU-only machine: tensors made without ``device=`` land on "meta".

Inside :func:`factories_on_meta`, a factory call (``torch.zeros``, ``arange``, ``tensor``, …) that
forgot ``device=`` makes a meta tensor, and the first operation mixing it with the real CPU
input raises ("Tensor on device meta is not on the expected device cpu!"). Code that passes
under it puts every tensor it makes on its input's device, so it runs unchanged on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import FORMATS, PerChannel, PerGroup

# constructor arguments of the registered names that need some (one case each)
_ARGS = {"int": [(4,), (3, False)], "lut": [(3,)]}


@contextmanager
def factories_on_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def registered_formats() -> list:
    """One ``pytest.param(fmt, granularity)`` per registered format (two for ``int``), each with
    the first of g32, g16, per-channel or g256 it accepts."""
    cases = []
    for name, make in FORMATS:
        for args in _ARGS.get(name, [()]):
            fmt = make(*args)
            cases.append(pytest.param(fmt, _granularity(fmt), id=fmt.name))
    return cases


def _granularity(fmt):
    for granularity in (PerGroup(32), PerGroup(16), PerChannel(), PerGroup(256)):
        try:
            fmt.check_granularity(granularity)
        except ConfigError:
            continue
        return granularity
    raise AssertionError(f"{fmt.name} accepts none of g32, g16, per-channel, g256")


def tensors_of(qw) -> list[torch.Tensor]:
    """Every tensor a QuantizedWeight holds (codes, parameters, permutation, outliers)."""
    found = [qw.codes, qw.scale, qw.zero, qw.perm, qw.tensor_scale, *(qw.outliers or ())]
    return [t for t in found if t is not None]


def assert_same_weight(a, b) -> None:
    """Bit-identical QuantizedWeights, all on the CPU (where their input was)."""
    ta, tb = tensors_of(a), tensors_of(b)
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb, strict=True):
        assert x.device == y.device == torch.device("cpu")
        assert same_bits(x, y)


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (any dtype, FP8 and NaN included)."""
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
