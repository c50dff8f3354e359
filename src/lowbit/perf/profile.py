"""Measured profiles: prefill and decode of a loaded model on the current device, wall-clock
end to end and per operator category (forward hooks give each module's inclusive time; a
module's own time is that minus its children's), plus torch.profiler's top operators."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from lowbit.runtime.policy import is_gpu, synchronize

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Measured:
    prefill_s: float
    decode_step_s: float
    decode_steps: int
    prefill_ops: dict[str, float] = field(default_factory=dict)
    decode_ops: dict[str, float] = field(default_factory=dict)
    top_aten: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def category(name: str, module: torch.nn.Module) -> str | None:
    """The predicted-operator category a module's own time belongs to."""
    short = name.rsplit(".", 1)[-1]
    cls = type(module).__name__
    if short in LINEARS or short == "lm_head" or short == "embed_tokens":
        return "embedding" if short == "embed_tokens" else short
    if "Norm" in cls:
        return "norm"
    if short == "self_attn":
        return "attention"
    if short == "mlp":
        return "silu_mul"
    if "DecoderLayer" in cls:
        return "residual_add"
    return None


class _Timer:
    """Inclusive times per module via forward hooks, turned into own times per category."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.mods = {n: m for n, m in model.named_modules() if category(n, m) is not None}
        self.inclusive: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        self.handles = []
        for n, m in self.mods.items():
            self.handles.append(m.register_forward_pre_hook(self._pre(n)))
            self.handles.append(m.register_forward_hook(self._post(n)))

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _pre(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self._start[name] = self._now()

        return hook

    def _post(self, name: str) -> Any:
        def hook(*_: Any) -> None:
            self.inclusive[name] += self._now() - self._start.pop(name)

        return hook

    def own_by_category(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for n, m in self.mods.items():
            own = self.inclusive[n] - sum(self.inclusive[c] for c in self._direct(n))
            out[category(n, m)] += max(own, 0.0)  # type: ignore[index]
        self.inclusive.clear()
        return dict(out)

    def _direct(self, name: str) -> list[str]:
        """Timed modules nested in ``name`` with no timed module between."""
        inner = [c for c in self.mods if c.startswith(name + ".")]
        return [c for c in inner if not any(c.startswith(o + ".") for o in inner if o != c)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def profile(
    model: torch.nn.Module, *, batch: int, prompt: int, gen: int, vocab: int, seed: int = 0
) -> Measured:
    """Prefill ``batch`` × ``prompt`` random tokens, then ``gen - 1`` decode steps with the KV
    cache; the last position's logits only (as serving engines compute). Times: the median of
    three prefills, and the mean decode step; then one hooked pass of each for the per-operator
    split (hooks add a little time, so the end-to-end figures come from unhooked passes)."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
    step_ids = torch.randint(0, vocab, (batch, 1), generator=g).to(device)

    def sync() -> None:
        synchronize(device)

    with torch.no_grad():
        warm = model(ids, use_cache=True, logits_to_keep=1)  # warm-up: prefill and one step
        model(step_ids, past_key_values=warm.past_key_values, use_cache=True, logits_to_keep=1)
        del warm
        times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            sync()
            times.append(time.perf_counter() - t0)
        past, steps = out.past_key_values, max(gen - 1, 1)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(step_ids, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
        sync()
        decode = (time.perf_counter() - t0) / steps
        prefill_ops, decode_ops, top = _split(model, ids, step_ids, device)
    return Measured(sorted(times)[1], decode, steps, prefill_ops, decode_ops, top)


def _split(model: Any, ids: torch.Tensor, step_ids: torch.Tensor, device: torch.device) -> tuple:
    timer = _Timer(model, device)
    try:
        out = model(ids, use_cache=True, logits_to_keep=1)
        prefill = timer.own_by_category()
        model(step_ids, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        decode = timer.own_by_category()
    finally:
        timer.remove()
    out = model(ids, use_cache=True, logits_to_keep=1)
    return prefill, decode, _top_aten(model, step_ids, out.past_key_values, device)


def _top_aten(
    model: Any, step_ids: torch.Tensor, past: Any, device: torch.device, n: int = 12
) -> list:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_gpu(device) else [])
    with torch_profile(activities=acts) as prof:
        model(step_ids, past_key_values=past, use_cache=True, logits_to_keep=1)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [
        {"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6} for e in rows
    ]


def operator_overheads(twin: torch.nn.Module, steps: int = 24) -> dict[str, float]:
    """Fixed seconds per operator occurrence, from decode steps of a tiny twin (arithmetic and
    traffic negligible): each category's own time, rescaled so the categories sum to the
    unhooked step time (hooks cost time themselves), divided by the twin's modules of that
    category (two residual adds per decoder layer; q/k norms are one operator of two)."""
    m = profile(twin, batch=1, prompt=8, gen=steps + 1, vocab=twin.config.vocab_size)
    hooked = sum(m.decode_ops.values())
    scale = m.decode_step_s / hooked if hooked else 1.0
    counts: dict[str, int] = defaultdict(int)
    for name, module in twin.named_modules():
        if (cat := category(name, module)) is not None:
            counts[cat] += 1
    each = {k: v * scale / max(counts[k], 1) for k, v in m.decode_ops.items()}
    out = {name: each.get(name, 0.0) for name in (*LINEARS, "embedding", "lm_head")}
    out |= {n: each.get("norm", 0.0) for n in ("input_norm", "post_norm", "final_norm")}
    out["qk_norm"] = 2 * each.get("norm", 0.0)
    out["attention"] = each.get("attention", 0.0)
    out["rotary"] = out["kv_write"] = 0.0  # inside the attention module's own time
    out["residual_add"] = each.get("residual_add", 0.0) / 2
    out["silu_mul"] = each.get("silu_mul", 0.0)
    return out
