"""Granularity: group counts, column → group indices (including a short last group) and the
per-group reductions that min-max scales are built on."""

from __future__ import annotations

import re

import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.formats import PerChannel, PerGroup, PerTensor, group_index
from lowbit.formats.granularity import group_reduce


@pytest.mark.parametrize(
    ("granularity", "in_features", "groups"),
    [
        (PerTensor(), 576, 1),
        (PerChannel(), 576, 1),
        (PerGroup(128), 512, 4),
        (PerGroup(128), 576, 5),
        (PerGroup(100), 192, 2),
        (PerGroup(48), 128, 3),
        (PerGroup(1), 7, 7),
        (PerGroup(1000), 7, 1),
    ],
)
def test_group_count(granularity, in_features, groups):
    assert granularity.groups(in_features) == groups
    g_idx = group_index(in_features, granularity)
    assert g_idx.dtype == torch.int64
    assert g_idx.shape == (in_features,)
    assert int(g_idx.max()) + 1 == groups


def test_non_dividing_group_index_has_a_short_last_group():
    g_idx = group_index(576, PerGroup(128))
    expected = torch.repeat_interleave(torch.arange(5), torch.tensor([128, 128, 128, 128, 64]))
    assert torch.equal(g_idx, expected)
    assert torch.equal(torch.bincount(g_idx), torch.tensor([128, 128, 128, 128, 64]))


@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel()])
def test_single_group_index_is_all_zero(granularity):
    assert torch.equal(group_index(96, granularity), torch.zeros(96, dtype=torch.long))


@pytest.mark.parametrize("size", [0, -3, True, 2.5, "64"])
def test_invalid_group_size_names_the_value(size):
    with pytest.raises(ConfigError, match=re.escape(f"got {size!r}")):
        PerGroup(size)


@pytest.mark.parametrize(
    ("granularity", "text"),
    [(PerTensor(), "per-tensor"), (PerChannel(), "per-channel"), (PerGroup(64), "group 64")],
)
def test_describe(granularity, text):
    assert granularity.describe() == text


@pytest.mark.parametrize("op", ["amax", "amin"])
@pytest.mark.parametrize("size", [16, 40])  # 40 does not divide 96: last group 16 wide
def test_group_reduce_matches_slices(op, size):
    W = torch.randn(5, 96, generator=torch.Generator().manual_seed(3))
    n_groups = PerGroup(size).groups(96)
    out = group_reduce(W, group_index(96, PerGroup(size)), n_groups, op)
    ref = torch.stack(
        [getattr(W[:, g * size : (g + 1) * size], op)(dim=1) for g in range(n_groups)], dim=1
    )
    assert out.shape == (5, n_groups)
    assert torch.equal(out, ref)


def test_group_reduce_follows_an_arbitrary_column_order():
    W = torch.randn(4, 12, generator=torch.Generator().manual_seed(4))
    g_idx = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 1, 1, 0, 2])
    out = group_reduce(W, g_idx, 3, "amax")
    ref = torch.stack([W[:, g_idx == g].amax(dim=1) for g in range(3)], dim=1)
    assert torch.equal(out, ref)


@pytest.mark.parametrize(("op", "ref"), [("amax", torch.amax), ("amin", torch.amin)])
def test_group_reduce_per_tensor(op, ref):
    W = torch.randn(6, 20, generator=torch.Generator().manual_seed(5))
    out = group_reduce(W, torch.zeros(20, dtype=torch.long), 1, op, per_tensor=True)
    assert out.shape == (1, 1)
    assert torch.equal(out[0, 0], ref(W))
