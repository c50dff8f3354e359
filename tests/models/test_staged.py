"""The staged block runner computes exactly what the block computes, with weights changed
between groups, and gives each group the statistics of its true inputs."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.models.lazy import LazyModel, block_list
from lowbit.models.quantize import capture_block_inputs
from lowbit.models.sources import resolve_model
from lowbit.models.staged import run_block_staged, run_block_two_pass


def _setup(path, chunks=3, ctx=24):
    handle = resolve_model(str(path))
    lazy = LazyModel(handle)
    torch.manual_seed(1)
    ids = torch.randint(0, handle.config.vocab_size, (chunks * 2, ctx))
    hidden, kwargs = capture_block_inputs(lazy, handle, ids, chunk_size=2)
    path0 = f"{handle.arch.blocks_path}.0"
    block = lazy.materialize(path0)
    groups = [[(m, block.get_submodule(m)) for m in g] for g in handle.arch.sequential_groups]
    return handle, block, hidden, kwargs, groups


def test_unchanged_weights_give_the_plain_forward(tiny_any):
    _, block, hidden, kwargs, groups = _setup(tiny_any)
    with torch.inference_mode():
        expected = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    expected = [e[0] if isinstance(e, tuple) else e for e in expected]
    seen = []
    out = run_block_staged(block, list(hidden), kwargs, groups, lambda g, s: seen.append(s.count))
    assert len(seen) == len(groups)
    assert all(c == sum(h.shape[0] * h.shape[1] for h in hidden) for c in seen)
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weights_changed_at_each_group_are_used_by_later_groups(tiny_any):
    _, block, hidden, kwargs, groups = _setup(tiny_any)
    original = {n: m.weight.detach().clone() for g in groups for n, m in g}

    def scale_group(g, stat):
        for _, module in groups[g]:
            module.weight.data = module.weight.data * 0.5

    out = run_block_staged(block, list(hidden), kwargs, groups, scale_group)
    with torch.inference_mode():  # block already holds the halved weights
        expected = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    expected = [e[0] if isinstance(e, tuple) else e for e in expected]
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(original[n], m.weight) for g in groups for n, m in g)


def test_two_pass_uses_the_final_weights_for_every_output(tiny_any):
    _, block, hidden, kwargs, groups = _setup(tiny_any)
    with torch.inference_mode():
        plain = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    counts = []

    def halve(g, stat):
        counts.append(stat.count)
        for _, module in groups[g]:
            module.weight.data = module.weight.data * 0.5

    out = run_block_two_pass(block, list(hidden), kwargs, groups, halve)
    with torch.inference_mode():
        expected = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    for a, b, c in zip(out, expected, plain, strict=True):
        b = b[0] if isinstance(b, tuple) else b
        c = c[0] if isinstance(c, tuple) else c
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a, c)
    assert counts == [sum(h.shape[0] * h.shape[1] for h in hidden)] * len(groups)


def test_hessian_of_a_later_group_sees_the_changed_earlier_group(tiny_llama):
    """True sequential: group 1 (o_proj) statistics are of inputs computed with group 0's new
    weights, not the original ones."""
    _, block, hidden, kwargs, groups = _setup(tiny_llama)
    counts = {}

    def zero_qkv(g, stat):
        counts[g] = stat.hessian().clone()
        if g == 0:
            for _, module in groups[0]:
                module.weight.data.zero_()

    run_block_staged(block, list(hidden), kwargs, groups, zero_qkv)
    assert torch.count_nonzero(counts[1]) == 0  # v = 0 → attention output 0 → o_proj input 0


def test_a_spec_that_does_not_match_the_forward_is_an_error(tiny_llama):
    _, block, hidden, kwargs, groups = _setup(tiny_llama)
    swapped = [groups[1], groups[0], *groups[2:]]
    with pytest.raises(LowbitError, match="order|never called"):
        run_block_staged(block, list(hidden), kwargs, swapped, lambda g, s: None)


def test_block_list_of_a_wrong_path_is_an_error(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    lazy = LazyModel(handle)
    with pytest.raises(Exception, match="not a list of decoder blocks"):
        block_list(lazy.model, "model.norm")
