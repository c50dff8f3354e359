"""Step 2: GPTQ W4 g128 of a random-weight model with the Llama-3.1-8B config, on calibration
windows of random tokens (full: 128 × 2048), timed end to end, with the peak device memory.

The target is 240 s on one H200; llm-compressor publishes 745 s on one GPU (264 s on four)
for Llama-3-8B GPTQ W4A16. Weights are built on the device straight into bf16 shards in a
temporary directory (not timed as quantization), then quantized block by block by
``api.quantize`` reading them lazily; the directory is removed at the end.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .random_model import build_random_model, config_dict
from .record import Deadline, Figures, OverBudget, peak_memory, reset_peak

TARGET_S = 240.0
LLMCOMPRESSOR_S = {"one GPU": 745.0, "four GPUs": 264.0}


@dataclass(frozen=True)
class LlamaProtocol:
    config: Path
    windows: int = 128
    ctx: int = 2048
    bits: int = 4
    group_size: int = 128
    seed: int = 0


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "vocab_size": 512,
    "tie_word_embeddings": False,
}


def random_windows(n: int, ctx: int, vocab: int, seed: int) -> Any:
    """``n`` × ``ctx`` uniformly random token ids (seeded), as the API's Windows."""
    from lowbit import api

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, ctx), generator=gen)
    info = {
        "source": f"random tokens (uniform over {vocab}, seed {seed})",
        "fingerprint": f"random-{vocab}-{seed}",
        "windows": n,
        "ctx": ctx,
        "selection": "random",
    }
    return api.Windows(ids, info)


def run_llama(
    figures: Figures,
    protocol: LlamaProtocol,
    rt_cfg: Any,
    work: Path,
    deadline: Deadline,
    *,
    config: dict[str, Any] | None = None,
) -> None:
    """Fill ``figures``: the build, then the quantization's wall time, per-block times, peak
    device memory and the targets. ``config``: a config dict instead of ``protocol.config``."""
    from lowbit import api

    rt = api.runtime(rt_cfg)
    figures["config"] = "tiny (given)" if config is not None else str(protocol.config)
    config = config or config_dict(protocol.config)
    model_dir = work / "random-model"
    try:
        figures["build"] = build_random_model(
            config, model_dir, device=rt.device, dtype=torch.bfloat16, seed=protocol.seed
        )
        print(f"built {figures['build']['bytes'] / 1e9:.2f} GB in "
              f"{figures['build']['build_s']:.1f} s", flush=True)  # fmt: skip
        deadline.check("building the random model")
        handle = api.load(str(model_dir))
        calib = random_windows(
            protocol.windows, protocol.ctx, int(config["vocab_size"]), protocol.seed
        )
        spec = api.spec_from_options(protocol.bits, protocol.group_size, True, "gptq")
        figures["protocol"] = {
            "scheme": spec.describe(),
            "calibration": calib.info,
            "runtime": rt.describe(),
        }
        _quantize(figures, handle, api.plan_from_options(spec), calib, rt, deadline)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def _quantize(
    figures: Figures, handle: Any, plan: Any, calib: Any, rt: Any, deadline: Deadline
) -> None:
    from lowbit import api

    blocks: list[float] = []
    figures["blocks_s"] = blocks
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        blocks.append(time.perf_counter() - t0)
        figures["blocks_done"] = f"{done}/{total}"
        print(f"block {done}/{total}: {blocks[-1]:.1f} s", flush=True)
        if deadline.left() <= 0 and done < total:
            per_block = blocks[-1] / done
            figures["extrapolated_wall_s"] = per_block * total
            raise OverBudget(
                f"budget spent after {done} of {total} blocks ({blocks[-1]:.0f} s); at "
                f"{per_block:.1f} s per block the whole model would take "
                f"{per_block * total:.0f} s"
            )

    reset_peak(rt.device)
    qm = api.quantize(handle, plan, calib, rt=rt, progress=progress)
    wall = time.perf_counter() - t0
    figures.update(
        wall_s=wall,
        peak=peak_memory(rt.device),
        timings=dict(qm.timings),
        execution=dict(qm.execution),
        layers=len(qm.layers),
        target_s=TARGET_S,
        within_target=wall <= TARGET_S,
        llmcompressor_published_s=LLMCOMPRESSOR_S,
        speedup_vs_llmcompressor_one_gpu=LLMCOMPRESSOR_S["one GPU"] / wall,
    )


def lines(figures: Figures) -> list[str]:
    out = []
    if "build" in figures:
        b = figures["build"]
        out.append(f"random model: {b['parameters'] / 1e9:.2f} B parameters, "
                   f"{b['bytes'] / 1e9:.2f} GB, built in {b['build_s']:.1f} s")  # fmt: skip
    if "wall_s" in figures:
        peak = figures["peak"]
        gpu = peak.get("gpu_allocated_bytes")
        rss = peak["rss_bytes"] / 2**30
        mem = (
            f"peak GPU {gpu / 2**30:.1f} GiB, RSS {rss:.1f} GiB"
            if gpu
            else f"peak RSS {rss:.2f} GiB"
        )
        out.append(
            f"GPTQ W4 g128: {figures['wall_s']:.1f} s wall (target {TARGET_S:.0f} s: "
            f"{'met' if figures['within_target'] else 'NOT met'}; llm-compressor 745 s), {mem}"
        )
    elif "extrapolated_wall_s" in figures:
        out.append(f"GPTQ W4 g128: {figures['blocks_done']} blocks, extrapolated "
                   f"{figures['extrapolated_wall_s']:.0f} s")  # fmt: skip
    return out
