"""lowbit._tensor.all_finite agrees with isfinite().all() on every kind of non-finite entry."""

from __future__ import annotations

import pytest
import torch

from lowbit._tensor import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_agrees_with_isfinite(dtype, bad):
    t = torch.randn(37, 53, generator=torch.Generator().manual_seed(0)).to(dtype)
    if bad is not None:
        t[11, 7] = bad
    assert all_finite(t) == bool(torch.isfinite(t).all()) == (bad is None)


def test_empty_and_integer_tensors_are_finite():
    assert all_finite(torch.empty(0, 4))
    assert all_finite(torch.arange(10, dtype=torch.int16))
