"""How much memory one block needs, checked against the runtime's budget before any work.

Estimates, from the model's shapes (no weights are read):
- ``weights``: the largest block's parameters in the compute dtype;
- ``statistics``: the second moment of the widest linear input while it is accumulated and
  averaged: its fp64 sum, one batch's fp32 product and the fp32 mean (16 bytes per in²);
- ``solver``: GPTQ's fp32 working set, the largest over the linears: H, its copy in sweep order
  and the factorisation's two temporaries (4·in²), the weight's copies, codes and errors
  (4·out·in);
- ``chunk``: one chunk of windows in flight through the block (per token about 4·hidden +
  2·intermediate values: the residual, the normalised input, attention or MLP products);
- ``in_flight``: the same for every window at once, which one-pass true-sequential
  quantization holds at its pauses.
The figures are deliberately rounded up; the result records which were used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lowbit.errors import ConfigError
from lowbit.runtime import Runtime


@dataclass(frozen=True)
class BlockNeeds:
    weights: int
    statistics: int
    solver: int
    chunk: int
    in_flight: int

    @property
    def one_block(self) -> int:
        """Bytes to quantize one block with one chunk in flight (statistics are accumulated,
        then the solver runs: the two do not coexist)."""
        return self.weights + max(self.statistics, self.solver) + self.chunk

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "one_block": self.one_block}


def block_needs(
    blocks: nn.ModuleList, runtime: Runtime, chunk_tokens: int, total_tokens: int
) -> BlockNeeds:
    """Needs of the largest of ``blocks`` (on any device, meta included)."""
    elt = _element_size(runtime)
    weights = max(sum(p.numel() for p in b.parameters()) for b in blocks) * elt
    shapes = [
        tuple(m.weight.shape) for b in blocks for m in b.modules() if isinstance(m, nn.Linear)
    ]
    widest = max((s[1] for s in shapes), default=0)
    per_token = _per_token_values(blocks[0], shapes) * elt
    return BlockNeeds(
        weights=weights,
        statistics=16 * widest * widest,
        solver=max((4 * i * i + 4 * o * i for o, i in shapes), default=0) * 4,
        chunk=per_token * chunk_tokens,
        in_flight=per_token * total_tokens,
    )


def _per_token_values(block: nn.Module, shapes: list[tuple[int, ...]]) -> int:
    hidden = max((s[1] for s in shapes), default=0)
    widest_out = max((s[0] for s in shapes), default=0)
    return 4 * min(hidden, widest_out) + 2 * widest_out


def _element_size(runtime: Runtime) -> int:
    import torch

    return torch.empty(0, dtype=runtime.dtype).element_size()


def check_fits(needs: int, runtime: Runtime, what: str, breakdown: dict[str, int]) -> int:
    """Refuse before any work when ``needs`` bytes exceed what the runtime has left now;
    returns that headroom."""
    free, source = runtime.headroom()
    if needs <= free:
        return free
    parts = ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in breakdown.items())
    raise ConfigError(
        f"{what} needs about {needs / 2**30:.2f} GiB for one block ({parts}), but "
        f"{free / 2**30:.2f} GiB is available on {runtime.device} ({source}); give it more "
        "memory (a larger --max-memory or cgroup limit, or a bigger device), fewer windows per "
        "chunk (--chunk-size), or a shorter --ctx"
    )
