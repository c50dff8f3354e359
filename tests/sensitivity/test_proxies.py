"""Proxies on a hand-made layer against a hand calculation."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.sensitivity.proxies import fisher_error, hessian_error, thread_invariant_sum


def test_hessian_error_by_hand():
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    Wq = torch.tensor([[1.5, 2.0], [3.0, 3.0]])  # ΔW² = [[0.25, 0], [0, 1]]
    h = torch.tensor([2.0, 10.0])  # E[x_0²] = 2, E[x_1²] = 10
    # column 0: 0.25 · 2, column 1: 1 · 10
    assert hessian_error(W, Wq, h) == pytest.approx(0.5 + 10.0)


def test_hessian_error_is_the_expected_output_error_for_uncorrelated_inputs():
    torch.manual_seed(0)
    W = torch.randn(8, 6)
    Wq = W + 0.1 * torch.randn(8, 6)
    std = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0, 1.5])
    X = torch.randn(200_000, 6) * std
    measured = ((X @ (W - Wq).T) ** 2).sum(1).mean()
    assert hessian_error(W, Wq, std**2) == pytest.approx(float(measured), rel=0.02)


def test_fisher_error_by_hand():
    W = torch.tensor([[1.0, -1.0]])
    Wq = torch.tensor([[0.0, -1.5]])  # ΔW² = [1, 0.25]
    F = torch.tensor([[4.0, 8.0]])
    assert fisher_error(W, Wq, F) == pytest.approx(0.5 * (4.0 + 2.0))


def test_no_change_costs_nothing():
    W = torch.randn(4, 4)
    assert hessian_error(W, W, torch.ones(4)) == 0.0
    assert fisher_error(W, W, torch.ones(4, 4)) == 0.0


@pytest.mark.parametrize("shape", [(576, 576), (3, 40_000), (100_003,), (1, 70_000), (5,)])
def test_sums_are_the_same_bits_at_any_thread_count(shape):
    """torch splits a full ``sum()`` of more than 32,768 elements across its threads (the
    partial sums added in an order that depends on their number); the proxies' sums do not."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    before = torch.get_num_threads()
    sums = {}
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            sums[t] = thread_invariant_sum(x)
    finally:
        torch.set_num_threads(before)
    assert len(set(sums.values())) == 1
    assert sums[1] == pytest.approx(math.fsum(x.flatten().tolist()), rel=1e-13)


def test_proxies_are_the_same_bits_at_any_thread_count():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(576, 576, generator=g)
    Wq, F, h = W + 0.01 * torch.randn(576, 576, generator=g), torch.rand(576, 576), torch.rand(576)
    before = torch.get_num_threads()
    got = set()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            got.add((fisher_error(W, Wq, F), hessian_error(W, Wq, h)))
    finally:
        torch.set_num_threads(before)
    assert len(got) == 1
