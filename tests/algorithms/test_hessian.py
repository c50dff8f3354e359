"""HessianAccumulator: the streamed mean XᵀX / n, on the plain and the blocked path."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import HessianAccumulator
from lowbit.algorithms.hessian import _BLOCK

# batch shapes (leading dims) of different sizes, including a 3-D (batch, seq) one and a single row
BATCHES = [(5,), (2, 9), (1,), (40,), (3, 4)]


@pytest.mark.parametrize(
    "in_features",
    [
        pytest.param(64, id="plain-64"),
        pytest.param(2 * _BLOCK - 1, id="plain-767"),
        pytest.param(2 * _BLOCK, id="blocked-768"),
        pytest.param(1000, id="blocked-1000"),  # three blocks, the last 232 wide
    ],
)
def test_equals_the_float64_mean_second_moment(in_features):
    g = torch.Generator().manual_seed(in_features)
    mix = torch.eye(in_features) + torch.randn(in_features, in_features, generator=g) / 8
    batches = [(torch.randn(*lead, in_features, generator=g) @ mix) for lead in BATCHES]
    acc = HessianAccumulator(in_features)
    for X in batches:
        acc.add_batch(X)
    X = torch.cat([b.reshape(-1, in_features) for b in batches]).double()
    reference = X.T @ X / X.shape[0]

    H = acc.hessian()
    assert acc.count == X.shape[0] == 5 + 18 + 1 + 40 + 12
    assert H.dtype == torch.float32 and H.shape == (in_features, in_features)
    assert torch.equal(H, H.T)
    scale = float(reference.diagonal().mean())
    torch.testing.assert_close(H.double(), reference, rtol=1e-5, atol=1e-5 * scale)


def test_low_precision_inputs_are_accumulated_in_fp32():
    X = torch.randn(32, 48, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    acc = HessianAccumulator(48)
    acc.add_batch(X)
    reference = X.double().T @ X.double() / 32
    torch.testing.assert_close(acc.hessian().double(), reference, rtol=1e-5, atol=1e-6)


def test_hessian_is_a_mean_not_a_sum():
    acc = HessianAccumulator(4)
    acc.add_batch(torch.ones(3, 4))
    acc.add_batch(3 * torch.ones(1, 4))
    assert torch.equal(acc.hessian(), torch.full((4, 4), (3 * 1 + 9) / 4))


def test_wrong_width_is_rejected():
    acc = HessianAccumulator(8)
    with pytest.raises(ValueError, match="8 features, got 7"):
        acc.add_batch(torch.zeros(2, 7))
    assert acc.count == 0


def test_empty_accumulator_has_no_hessian():
    with pytest.raises(ValueError, match="no inputs"):
        HessianAccumulator(8).hessian()


@pytest.mark.parametrize("in_features", [64, 800], ids=["plain", "blocked"])
def test_the_sum_does_not_depend_on_how_windows_are_chunked_or_split(in_features):
    """One process's chunks of 4 windows, two ranks' shares of 3 (their fp64 partial sums
    added), and the windows in reverse order all give the same fp32 Hessian to the bit."""
    g = torch.Generator().manual_seed(3)
    windows = torch.randn(6, 128, in_features, generator=g) * torch.rand(in_features, generator=g)

    def accumulated(*chunks: torch.Tensor) -> HessianAccumulator:
        acc = HessianAccumulator(in_features)
        for chunk in chunks:
            acc.add_batch(chunk)
        return acc

    single = accumulated(windows[:4], windows[4:]).hessian()
    first, second = accumulated(windows[:3]), accumulated(windows[3:])
    first.sum.add_(second.sum)  # what the all-reduce of two ranks does
    first.count += second.count
    assert first.sum.dtype == torch.float64
    assert torch.equal(first.hessian(), single)
    assert torch.equal(accumulated(windows.flip(0)).hessian(), single)
