"""SmoothQuant's scales and the per-channel input statistics they come from."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import ChannelStats, SmoothQuantConfig, smoothquant_scales, weight_absmax
from lowbit.errors import ConfigError


def test_scales_by_hand():
    act = torch.tensor([16.0, 1.0, 4.0])
    w = torch.tensor([1.0, 4.0, 0.25])
    torch.testing.assert_close(smoothquant_scales(act, w, 0.5), torch.tensor([4.0, 0.5, 4.0]))
    torch.testing.assert_close(smoothquant_scales(act, w, 0.75), act.pow(0.75) / w.pow(0.25))


def test_alpha_one_half_balances_activation_and_weight_maxima():
    """After smoothing with α = 0.5, max|X_j / s_j| = max|W_j · s_j| for every channel."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 32, generator=g)
    X[:, 3] *= 80.0
    Ws = [torch.randn(24, 32, generator=g), torch.randn(8, 32, generator=g)]
    s = smoothquant_scales(X.abs().amax(0), weight_absmax(Ws), 0.5)
    torch.testing.assert_close((X / s).abs().amax(0), weight_absmax([W * s for W in Ws]))
    assert float((X / s).abs().amax()) < float(X.abs().amax()) / 4


def test_dead_channels_and_zero_weights_are_clamped():
    s = smoothquant_scales(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), 0.5)
    assert float(s[0]) == pytest.approx(1e-5)
    assert float(s[1]) == pytest.approx(1.0 / (1e-5) ** 0.5)
    assert torch.isfinite(s).all()


def test_weight_absmax_is_over_every_weight_of_the_pair():
    a = torch.tensor([[1.0, -5.0], [2.0, 0.0]])
    b = torch.tensor([[-3.0, 1.0]])
    torch.testing.assert_close(weight_absmax([a, b]), torch.tensor([3.0, 5.0]))


def test_channel_stats_stream_over_batches():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 50, 16, generator=g)
    stats = ChannelStats(16)
    for chunk in X:
        stats.add_batch(chunk.unsqueeze(0))
    flat = X.reshape(-1, 16)
    assert stats.count == 150
    torch.testing.assert_close(stats.abs_mean(), flat.abs().mean(0))
    torch.testing.assert_close(stats.abs_max, flat.abs().amax(0))
    with pytest.raises(ValueError, match="16 features"):
        stats.add_batch(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="no inputs"):
        ChannelStats(4).abs_mean()


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, True])
def test_config_refuses_alpha_outside_the_open_unit_interval(alpha):
    with pytest.raises(ConfigError, match="SmoothQuant alpha"):
        SmoothQuantConfig(alpha)
    assert SmoothQuantConfig().alpha == 0.5
