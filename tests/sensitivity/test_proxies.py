"""Proxies on a hand-made layer against a hand calculation."""

from __future__ import annotations

import pytest
import torch

from lowbit.sensitivity.proxies import fisher_error, hessian_error


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
