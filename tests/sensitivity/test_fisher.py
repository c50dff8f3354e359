"""The block-wise Fisher backward against whole-model autograd on tiny offline models."""

from __future__ import annotations

import pytest
import torch

from lowbit.models.sources import resolve_model
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.fisher import model_fisher
from tests.helpers.whole_model import whole_model_fisher


@pytest.fixture(scope="module")
def rt():
    return resolve_runtime(RuntimeConfig(dtype="float32"))


def _ids(handle, n=3, ctx=16):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, handle.config.vocab_size, (n, ctx), generator=g)


def test_blockwise_fisher_equals_whole_model_autograd(tiny_any, rt):
    """Same values (on the CPU in fp32 they came out bit for bit equal: same operations)."""
    handle = resolve_model(str(tiny_any))
    ids = _ids(handle)
    lazy = handle.lazy(rt)
    names = [
        f"{handle.arch.blocks_path}.{i}.{m}"
        for i in range(len(lazy))
        for m in handle.arch.linear_names
    ]
    whole = whole_model_fisher(handle.load_model(rt), names, ids)
    seen = []
    for i, fisher in model_fisher(lazy, ids, rt.device):
        seen.append(i)
        for member, F in fisher.items():
            ref = whole[f"{handle.arch.blocks_path}.{i}.{member}"]
            assert F.dtype == torch.float32 and F.shape == ref.shape
            torch.testing.assert_close(F, ref, rtol=1e-5, atol=1e-12 * float(ref.abs().max()))
    assert seen == list(range(len(lazy) - 1, -1, -1))
