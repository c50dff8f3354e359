"""A sensitivity table does not depend on torch's thread count (issue 17): a Ray worker runs
one thread per CPU slot, the driver as many as the machine has, and ``lowbit sensitivity
--ray`` merges the workers' shards into the table one process would measure."""

from __future__ import annotations

import pytest
import torch

from lowbit.algorithms import RTNConfig
from lowbit.formats import IntFormat, PerGroup
from lowbit.models.sources import resolve_model
from lowbit.plan import LayerSpec
from lowbit.runtime import RuntimeConfig, resolve_runtime
from lowbit.sensitivity.probe import ProbeConfig, measure

MENU = tuple(LayerSpec(IntFormat(b), PerGroup(64), RTNConfig()) for b in (2, 4))
CFG = ProbeConfig(probe_windows=2, probe_ctx=24, fisher_windows=3, fisher_ctx=16, batch=2)


def _table(model, threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        handle = resolve_model(str(model))
        g = torch.Generator().manual_seed(0)
        calib = torch.randint(0, handle.config.vocab_size, (4, 32), generator=g)
        rt = resolve_runtime(RuntimeConfig("cpu", "float32"))
        return measure(handle, MENU, calib, CFG, runtime=rt)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 3])
def test_table_is_the_same_at_one_thread_and_more(wide_llama, threads):
    one, many = _table(wide_llama, 1), _table(wide_llama, threads)
    assert list(one.entries) == list(many.entries)
    for key, e in one.entries.items():
        m = many.entries[key]
        assert (m.bits, m.kl, m.hessian, m.fisher) == (e.bits, e.kl, e.hessian, e.fisher), key
