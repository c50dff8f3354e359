"""A paper plan (no run): data-parallel GPTQ calibration of a 671B DeepSeek-V3-class model on
N nodes of 8 × H200 (N = 1, 2, 4), as lowbit's torch.distributed path would run it, from
lowbit's performance model: the model's linear layers from ``lowbit.perf.shape`` (read from
``bench/configs/deepseek-v3.json``), the GPU's peaks and NVLink bandwidth from
``lowbit.perf.hardware`` (``h200``). Every other number is an assumption, listed in the result.

    python bench/scale_plan.py          # writes bench/results/scale_plan_671b.json
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, write_result  # noqa: E402

from lowbit.perf.hardware import get_hardware  # noqa: E402
from lowbit.perf.shape import ModelShape, shape_from_config  # noqa: E402

ASSUME = {
    "calibration_tokens": 128 * 2048,  # 128 windows of 2048 tokens
    "ctx": 2048,
    "expert_tokens": "routed: each routed expert sees T × top_k / experts tokens on average "
    "(balanced routing); lowbit's default policy `all` (every token through every expert) "
    "multiplies the expert forward and Hessian work by experts / top_k = 32",
    "forward_efficiency": 0.4,  # of the bf16 tensor peak, for the block forwards
    "fp32_efficiency": 0.6,  # of the fp32 peak, for Σxᵀx and the GPTQ solve (fp32 GEMMs)
    "nvlink_gbs_per_direction": 450,  # half the datasheet's 900 GB/s (both directions)
    "inter_node_gbs_per_gpu": 50,  # one 400 Gb/s InfiniBand NIC per GPU (DGX H200 layout)
    "storage_gbs_per_node": 5,  # checkpoint read once per node into its page cache
    "checkpoint_bytes": 671e9,  # FP8 weights as published, dequantized to bf16 per block
    "packed_bits_per_weight": 4.125,  # W4 g128 with fp16 scales, broadcast from owner ranks
    "hessian_block": 384,  # lowbit's HessianAccumulator column block (upper triangle only)
    "hessian_sum_bytes": 8,  # Σxᵀx kept in fp64 (lowbit.algorithms.hessian), all-reduced in fp64
    "hessian_adds": "each window's fp32 XᵀX is added into the fp64 sum: 16 bytes of HBM "
    "traffic per element (read and write fp64) per window, on each rank for its own windows",
    "solve_seconds_per_column": 4 * 10e-6,  # GPTQ's column loop: ~4 kernel launches of ~10 µs
}


def _groups(shape: ModelShape, block: int) -> dict[tuple[str, int], int]:
    """Distinct linear inputs of a block (those that share an input share a Hessian): key
    (parent module, in features) → how many Hessians (one per expert)."""
    out: dict[tuple[str, int], int] = {}
    for lin in shape.linears(block):
        out[(lin.name.rsplit(".", 1)[0], lin.in_features)] = lin.experts
    return out


def _block(shape: ModelShape, block: int, T: float) -> dict[str, float]:
    """FLOPs and bytes of one block's calibration (all ranks together)."""

    def tokens(experts: int, active: int) -> float:
        return T if experts == 1 else T * active / experts

    fwd = sum(2 * tokens(x.experts, x.active) * x.in_features * x.out_features * x.experts
              for x in shape.linears(block))  # fmt: skip
    mla = shape.mla
    head = (mla.qk_nope + mla.qk_rope + mla.v_head_dim) if mla else 2 * shape.head_dim
    fwd += 2 * T * (ASSUME["ctx"] / 2) * shape.heads * head  # causal attention scores and values
    active = {(x.name.rsplit(".", 1)[0], x.in_features): x.active for x in shape.linears(block)}
    hess = hbytes = 0.0
    elem = ASSUME["hessian_sum_bytes"]
    for (parent, n), count in _groups(shape, block).items():
        nb = math.ceil(n / ASSUME["hessian_block"])
        hess += count * tokens(count, active[(parent, n)]) * n * n * (1 + 1 / nb)
        hbytes += count * n * n * elem
    solve = sum(x.experts * (x.out_features * x.in_features**2) for x in shape.linears(block))
    solve += sum(count * n**3 for (_, n), count in _groups(shape, block).items())  # factor
    params = sum(x.in_features * x.out_features * x.experts for x in shape.linears(block))
    columns = sum(x.in_features * x.experts for x in shape.linears(block))
    biggest = max(count * n * n * elem for (_, n), count in _groups(shape, block).items())
    return {
        "forward": fwd, "hessian": hess, "solve": solve, "hessian_bytes": hbytes,
        "params": params, "columns": columns, "largest_group_hessians_bytes": biggest,
    }  # fmt: skip


def plan(nodes: int, shape: ModelShape, gpus_per_node: int = 8) -> dict[str, Any]:
    hw = get_hardware("h200")
    R, T = gpus_per_node * nodes, ASSUME["calibration_tokens"]
    bf16 = hw.peak("bf16") * ASSUME["forward_efficiency"]
    fp32 = hw.peak("fp32") * ASSUME["fp32_efficiency"]
    nvl, ib = ASSUME["nvlink_gbs_per_direction"] * 1e9, ASSUME["inter_node_gbs_per_gpu"] * 1e9
    t: dict[str, float] = defaultdict(float)
    peak_mem = 0.0
    for b in range(shape.layers):
        c = _block(shape, b, T)
        t["forward_s"] += c["forward"] / R / bf16
        t["hessian_s"] += c["hessian"] / R / fp32
        windows = ASSUME["calibration_tokens"] / ASSUME["ctx"] / R  # each rank's own windows
        t["fp64_adds_s"] += windows * c["hessian_bytes"] * 2 / hw.bandwidth
        t["solve_s"] += c["solve"] / R / fp32  # owners balance the solves over the ranks
        t["solve_launch_s"] += c["columns"] * ASSUME["solve_seconds_per_column"] / R
        # hierarchical all-reduce: NVLink reduce-scatter/all-gather, then 1/8 over InfiniBand
        t["all_reduce_s"] += 2 * (R - 1) / R * c["hessian_bytes"] / nvl if R > 1 else 0.0
        if nodes > 1:
            t["all_reduce_s"] += 2 * (nodes - 1) / nodes * c["hessian_bytes"] / 8 / ib
        t["broadcast_s"] += (
            c["params"] * ASSUME["packed_bits_per_weight"] / 8 / (ib if nodes > 1 else nvl)
        )
        acts = 2 * (T / R) * shape.hidden * 2  # a block's inputs and outputs, bf16, own windows
        peak_mem = max(peak_mem, c["params"] * 2 + c["largest_group_hessians_bytes"] + acts)
    t["read_weights_s"] = ASSUME["checkpoint_bytes"] / (ASSUME["storage_gbs_per_node"] * 1e9)
    total = sum(t.values())
    return {"nodes": nodes, "ranks": R, "seconds": dict(t), "total_s": total,
            "total_h": total / 3600, "peak_memory_per_rank_gb": peak_mem / 1e9,
            "fits_141_gb": peak_mem < hw.memory_bytes}  # fmt: skip


def _anchor() -> dict[str, Any]:
    """The same model of Qwen3-30B-A3B on one GPU against llm-compressor's published GPTQ
    W4A16 time for it (14,208 s on one GPU; 3,694 s on four: issue 17's figures)."""
    config = json.loads((ROOT / "bench" / "configs" / "qwen3-30b-a3b.json").read_text())
    one = plan(1, shape_from_config(config), gpus_per_node=1)
    four = plan(1, shape_from_config(config), gpus_per_node=4)
    return {
        "model": "Qwen3-30B-A3B (bench/configs/qwen3-30b-a3b.json), weights read from page cache",
        "modelled_s_1_gpu": one["total_s"] - one["seconds"]["read_weights_s"],
        "modelled_s_4_gpus": four["total_s"] - four["seconds"]["read_weights_s"],
        "published_s_1_gpu": 14208, "published_s_4_gpus": 3694,
        "source": "llm-compressor's published GPTQ W4A16 runs, as quoted in issue 17",
    }  # fmt: skip


def main() -> None:
    config = json.loads((ROOT / "bench" / "configs" / "deepseek-v3.json").read_text())
    shape = shape_from_config(config)
    params = sum(x.in_features * x.out_features * x.experts
                 for b in range(shape.layers) for x in shape.linears(b))  # fmt: skip
    record = {
        "model": "DeepSeek-V3 class (config: bench/configs/deepseek-v3.json, the published "
        "deepseek-ai/DeepSeek-V3 config.json values)",
        "linear_parameters": params,
        "hardware": "h200 from lowbit.perf.hardware (peaks: bf16 989.5, fp32 67 TFLOP/s, "
        "HBM 4.8 TB/s)",
        "assumptions": ASSUME,
        "plans": [plan(n, shape) for n in (1, 2, 4)],
        "check_against_a_published_figure": (anchor := _anchor()),
        "what_is_not_modelled": "kernel launch and Python overheads; pickling of the broadcast "
        "results (lowbit broadcasts each solved layer with broadcast_object_list); imbalance "
        "of the routed experts; the embedding and head (RTN); evaluation",
    }
    ratio = anchor["published_s_1_gpu"] / anchor["modelled_s_1_gpu"]
    for p in record["plans"]:  # the model's shortfall on the published figure, carried over
        p["total_h_scaled_to_published"] = p["total_h"] * ratio
    out = write_result(RESULTS / "scale_plan_671b.json", record)
    for p in out["plans"]:
        print(
            p["nodes"],
            round(p["total_h"], 2),
            "h",
            round(p["peak_memory_per_rank_gb"], 1),
            "GB",
            {k: round(v) for k, v in p["seconds"].items()},
        )


if __name__ == "__main__":
    main()
