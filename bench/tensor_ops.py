"""Micro-timings behind three hot-path choices, each against the alternative it replaced or
beat, on this machine with one thread (median of 7 runs):

- packing a 1536 × 576 INT4 layer: bytes joined in uint8 (``_pack_bytes``, used for widths
  that divide 8) against 8 codes to an int64 word (``_pack_words``, the previous path for every
  width), and the same for unpacking;
- the finite check: ``all_finite`` (one ``aminmax``) against ``isfinite(t).all()``;
- mirroring a Hessian's upper triangle: the block copies ``HessianAccumulator.hessian`` uses
  against ``triu(H) + triu(H, 1).T`` and against one strict-upper temporary added transposed.

    .venv/bin/python bench/tensor_ops.py     # writes bench/results/tensor_ops.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, median_ms, write_result

from lowbit._tensor import all_finite
from lowbit.algorithms.hessian import HessianAccumulator
from lowbit.formats import packing


def _unpack_words_signed(data: torch.Tensor, bits: int) -> torch.Tensor:
    out = packing._unpack_words(data, bits)
    return torch.where(out >= 1 << (bits - 1), out - (1 << bits), out)


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (1536 * 576,), dtype=torch.int8, generator=gen)
    packed = packing.pack(codes, 4)
    assert torch.equal(packing._pack_words(codes, 4), packed)
    assert torch.equal(packing.unpack(packed, 4, codes.numel(), True), codes.to(torch.int16))
    rows = {
        "pack_int4_bytes_ms": median_ms(lambda: packing._pack_bytes(codes, 4)),
        "pack_int4_words_ms": median_ms(lambda: packing._pack_words(codes, 4)),
        "unpack_int4_ms": median_ms(lambda: packing.unpack(packed, 4, codes.numel(), True)),
        "unpack_int4_words_ms": median_ms(lambda: _unpack_words_signed(packed, 4)),
    }
    for n in (1536, 5632):
        x = torch.randn(n, n, generator=gen)
        rows[f"all_finite_{n}_ms"] = median_ms(lambda x=x: all_finite(x))
        rows[f"isfinite_all_{n}_ms"] = median_ms(lambda x=x: bool(torch.isfinite(x).all()))
        acc = HessianAccumulator(n)
        acc.add_batch(torch.randn(256, n, generator=gen))
        S = acc.sum / acc.count

        def one_temp(S: torch.Tensor = S) -> torch.Tensor:
            H = S.clone()
            upper = torch.triu(H, 1)
            return H.triu_().add_(upper.T)

        rows[f"hessian_blocks_{n}_ms"] = median_ms(acc.hessian, 3)
        rows[f"hessian_triu_sum_{n}_ms"] = median_ms(
            lambda S=S: torch.triu(S) + torch.triu(S, 1).T, 3
        )
        rows[f"hessian_one_temp_{n}_ms"] = median_ms(one_temp, 3)
    write_result(RESULTS / "tensor_ops.json", {"threads": 1, "median_ms": rows})
    for key, value in rows.items():
        print(f"{key:28s} {value:9.2f}")


if __name__ == "__main__":
    main()
