"""Step 4: GPTQ W4 g128 of a random-weight mixture of experts of Qwen3-30B-A3B's shape (its
first ``layers`` blocks: the whole model does not fit the device check's budget), every expert
calibrated (every token through every expert for the Hessians, the default policy), timed
block by block, with the peak device memory and the routed tokens per expert.

llm-compressor publishes 14,208 s on one GPU (3,694 s on four) for Qwen3-30B-A3B GPTQ W4A16;
the figure here is per block, and the whole model's time is extrapolated (labelled so).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .llama import random_windows
from .random_model import build_random_model, config_dict
from .record import Deadline, Figures, OverBudget, peak_memory, reset_peak

LLMCOMPRESSOR_S = {"one GPU": 14208.0, "four GPUs": 3694.0}

TINY_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class MoEProtocol:
    config: Path
    layers: int = 6
    windows: int = 32
    ctx: int = 2048
    seed: int = 0


def run_moe(
    figures: Figures,
    protocol: MoEProtocol,
    rt_cfg: Any,
    work: Path,
    deadline: Deadline,
    *,
    config: dict[str, Any] | None = None,
) -> None:
    from lowbit import api

    rt = api.runtime(rt_cfg)
    config = dict(config or config_dict(protocol.config))
    full_layers = int(config["num_hidden_layers"])
    config["num_hidden_layers"] = min(protocol.layers, full_layers)
    figures["config"] = {"source": str(protocol.config), "layers": config["num_hidden_layers"],
                         "layers_of_the_full_model": full_layers}  # fmt: skip
    model_dir = work / "random-moe"
    try:
        figures["build"] = build_random_model(
            config, model_dir, device=rt.device, dtype=torch.bfloat16, seed=protocol.seed
        )
        deadline.check("building the random MoE")
        handle = api.load(str(model_dir))
        calib = random_windows(
            protocol.windows, protocol.ctx, int(config["vocab_size"]), protocol.seed
        )
        spec = api.spec_from_options(4, 128, True, "gptq")
        figures["protocol"] = {"scheme": spec.describe(), "calibration": calib.info,
                               "runtime": rt.describe()}  # fmt: skip
        _quantize(figures, handle, api.plan_from_options(spec), calib, rt, deadline, full_layers)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def _quantize(figures, handle, plan, calib, rt, deadline: Deadline, full_layers: int) -> None:
    from lowbit import api

    blocks: list[float] = []
    figures["blocks_s"] = blocks
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        blocks.append(time.perf_counter() - t0)
        figures["blocks_done"] = f"{done}/{total}"
        figures["extrapolated_full_model_s"] = blocks[-1] / done * full_layers
        print(f"moe block {done}/{total}: {blocks[-1]:.1f} s", flush=True)
        if deadline.left() <= 0 and done < total:
            raise OverBudget(f"budget spent after {done} of {total} MoE blocks")

    reset_peak(rt.device)
    qm = api.quantize(handle, plan, calib, rt=rt, progress=progress)
    experts = qm.execution.get("experts", {})
    counts = [c for e in experts.values() for c in e["routed_tokens"]]
    figures.update(
        wall_s=time.perf_counter() - t0,
        peak=peak_memory(rt.device),
        layers=len(qm.layers),
        experts_per_block=len(next(iter(experts.values()))["routed_tokens"]) if experts else 0,
        routed_tokens={"min": min(counts), "max": max(counts)} if counts else {},
        unrouted_experts=sum(e["unrouted"] for e in experts.values()),
        finite=all(bool(torch.isfinite(qm.weights[n].scale).all()) for n in qm.weights),
        llmcompressor_published_s=LLMCOMPRESSOR_S,
    )


def lines(figures: Figures) -> list[str]:
    out = []
    if "wall_s" in figures:
        cfg = figures["config"]
        peak = figures["peak"]
        gpu = peak.get("gpu_allocated_bytes")
        mem = (
            f"peak GPU {gpu / 2**30:.1f} GiB"
            if gpu
            else f"peak RSS {peak['rss_bytes'] / 2**30:.2f} GiB"
        )
        out.append(
            f"MoE GPTQ W4 g128 ({cfg['layers']} of {cfg['layers_of_the_full_model']} blocks): "
            f"{figures['wall_s']:.1f} s, {mem}; whole model extrapolated "
            f"{figures['extrapolated_full_model_s']:.0f} s (llm-compressor 14,208 s); "
            f"{figures['unrouted_experts']} expert-blocks with no routed token, all calibrated"
        )
    elif "extrapolated_full_model_s" in figures:
        out.append(f"MoE: {figures['blocks_done']} blocks, whole model extrapolated "
                   f"{figures['extrapolated_full_model_s']:.0f} s")  # fmt: skip
    return out
