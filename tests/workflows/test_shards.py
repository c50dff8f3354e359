"""Blocks cut into sensitivity shards: every block once, balanced cost, bad counts refused."""

from __future__ import annotations

import pytest

from lowbit.errors import ConfigError
from lowbit.workflows.shards import block_shards


@pytest.mark.parametrize("n_blocks, shards", [(30, 1), (30, 2), (30, 3), (30, 7), (2, 2), (3, 5)])
def test_every_block_once_with_balanced_cost(n_blocks, shards):
    parts = block_shards(n_blocks, shards)
    assert len(parts) == min(n_blocks, shards) and all(parts)
    assert sorted(b for p in parts for b in p) == list(range(n_blocks))
    assert all(list(p) == sorted(p) for p in parts)
    cost = [sum(n_blocks - i for i in p) for p in parts]
    # longest processing time first: no shard exceeds another by more than its largest job
    assert max(cost) - min(cost) <= n_blocks


def test_no_shards_is_refused():
    with pytest.raises(ConfigError, match="at least 1"):
        block_shards(30, 0)


def test_thirty_blocks_in_two_shards_cost_within_one_block():
    a, b = block_shards(30, 2)
    assert abs(sum(30 - i for i in a) - sum(30 - i for i in b)) <= 1  # 465 block-costs in all


def test_every_shard_carries_the_thread_count():
    """Issue 17: GPTQ's figures change with torch's thread count, so each shard's trial
    configuration names the one it must run with (the driver's); none is refused."""
    from lowbit import api
    from lowbit.runtime import RuntimeConfig
    from lowbit.sensitivity.probe import ProbeConfig
    from lowbit.workflows.shards import shard_configs
    from lowbit.workflows.spine import Execution

    args = ("m", 4, (api.spec_from_options(4, 64, True, "gptq"),),
            api.TextConfig("builtin:python-docs", 32, 4), ProbeConfig(),
            Execution(RuntimeConfig("cpu", "float32")), 2)  # fmt: skip
    configs = shard_configs(*args, 3)
    assert len(configs) == 2 and {c["threads"] for _, c in configs} == {3}
    with pytest.raises(ConfigError, match="at least 1 thread"):
        shard_configs(*args, 0)
