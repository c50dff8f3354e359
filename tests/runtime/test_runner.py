"""The block runner: the staged, recompute and two-pass modes compute exactly what the block
computes, with weights changed between groups, and give each group the statistics of its true
inputs; the staged and recompute modes agree bit for bit."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import HessianAccumulator
from lowbit.errors import LowbitError
from lowbit.models.capture import capture
from lowbit.models.lazy import block_list
from lowbit.models.sources import resolve_model
from lowbit.runtime.runner import Activations, Chunk, run_recompute, run_staged, run_two_pass


def _setup(path, chunks=3, ctx=24):
    handle = resolve_model(str(path))
    lazy = handle.lazy()
    torch.manual_seed(1)
    ids = torch.randint(0, handle.config.vocab_size, (chunks * 2, ctx))
    acts = capture(lazy, ids, 2, lazy.runtime.device)
    block = lazy.load(0)
    groups = [[(m, block.get_submodule(m)) for m in g] for g in handle.arch.sequential_groups]
    hidden = [c.hidden for c in acts.chunks]
    kwargs = [c.kwargs for c in acts.chunks]
    return handle, block, acts, hidden, kwargs, groups


def run_block_staged(block, acts, groups, on_group, runner=run_staged):
    """The old signature: ``on_group(g, stat)`` with the group's Hessian accumulator."""
    stats = {}

    def observe(g, x):
        stats.setdefault(g, HessianAccumulator(x.shape[-1])).add_batch(x)

    out = runner(block, acts, groups, observe, lambda g: on_group(g, stats[g]))
    return [c.hidden for c in out.chunks]


def run_block_two_pass(block, acts, groups, on_group):
    return run_block_staged(block, acts, groups, on_group, run_two_pass)


def _copy(acts):
    """The staged runner consumes its inputs (frees each chunk's input as it runs)."""
    return Activations([Chunk(c.hidden, c.kwargs) for c in acts.chunks], acts.device, acts.home)


def test_unchanged_weights_give_the_plain_forward(tiny_any):
    _, block, acts, hidden, kwargs, groups = _setup(tiny_any)
    with torch.inference_mode():
        expected = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    expected = [e[0] if isinstance(e, tuple) else e for e in expected]
    seen = []
    out = run_block_staged(block, _copy(acts), groups, lambda g, s: seen.append(s.count))
    assert len(seen) == len(groups)
    assert all(c == sum(h.shape[0] * h.shape[1] for h in hidden) for c in seen)
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weights_changed_at_each_group_are_used_by_later_groups(tiny_any):
    _, block, acts, hidden, kwargs, groups = _setup(tiny_any)
    original = {n: m.weight.detach().clone() for g in groups for n, m in g}

    def scale_group(g, stat):
        for _, module in groups[g]:
            module.weight.data = module.weight.data * 0.5

    out = run_block_staged(block, _copy(acts), groups, scale_group)
    with torch.inference_mode():  # block already holds the halved weights
        expected = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    expected = [e[0] if isinstance(e, tuple) else e for e in expected]
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(original[n], m.weight) for g in groups for n, m in g)


def test_two_pass_uses_the_final_weights_for_every_output(tiny_any):
    _, block, acts, hidden, kwargs, groups = _setup(tiny_any)
    with torch.inference_mode():
        plain = [block(h, **k) for h, k in zip(hidden, kwargs, strict=True)]
    counts = []

    def halve(g, stat):
        counts.append(stat.count)
        for _, module in groups[g]:
            module.weight.data = module.weight.data * 0.5

    out = run_block_two_pass(block, _copy(acts), groups, halve)
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
    _, block, acts, _, _, groups = _setup(tiny_llama)
    counts = {}

    def zero_qkv(g, stat):
        counts[g] = stat.hessian().clone()
        if g == 0:
            for _, module in groups[0]:
                module.weight.data.zero_()

    run_block_staged(block, _copy(acts), groups, zero_qkv)
    assert torch.count_nonzero(counts[1]) == 0  # v = 0 → attention output 0 → o_proj input 0


def test_a_spec_that_does_not_match_the_forward_is_an_error(tiny_llama):
    _, block, acts, _, _, groups = _setup(tiny_llama)
    swapped = [groups[1], groups[0], *groups[2:]]
    with pytest.raises(LowbitError, match="order|never called"):
        run_block_staged(block, _copy(acts), swapped, lambda g, s: None)


def test_block_list_of_a_wrong_path_is_an_error(tiny_llama):
    handle = resolve_model(str(tiny_llama))
    lazy = handle.lazy()
    with pytest.raises(Exception, match="not a list of decoder blocks"):
        block_list(lazy.model, "model.norm")


def test_recompute_equals_staged_bit_for_bit(tiny_any):
    """Bounded-memory true-sequential gives the same statistics and outputs as one pass."""
    _, block, acts, _, _, groups = _setup(tiny_any)
    original = {n: m.weight.detach().clone() for g in groups for n, m in g}
    results = {}
    for runner in (run_staged, run_recompute):
        for n, m in (pair for g in groups for pair in g):
            m.weight.data = original[n].clone()
        hessians = []

        def halve(g, stat, hessians=hessians):
            hessians.append(stat.hessian())
            for _, module in groups[g]:
                module.weight.data = module.weight.data * 0.5

        out = run_block_staged(block, _copy(acts), groups, halve, runner)
        results[runner.__name__] = (hessians, out)
    (h1, o1), (h2, o2) = results.values()
    assert all(torch.equal(a, b) for a, b in zip(h1, h2, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(o1, o2, strict=True))
