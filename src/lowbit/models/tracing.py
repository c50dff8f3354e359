"""Tracing one decoder block on random weights: what :mod:`lowbit.models.discover` learns.

The block runs once with every expert called on every token (the calibration policy ``all``),
with a pre-hook on each linear and a forward hook on each norm:

- **groups**: the linears in call order; consecutive calls on the same input tensor form one
  sequential group (they share a Hessian). Two linears that read the same input but are not
  called one after the other (DeepSeek's q_a_proj and kv_a_proj_with_mqa, with q_b_proj in
  between) are two groups; linears of one module reading one input are a *fused* group
  (serving engines run them as one matmul);
- **smoothing pairs**: a norm whose output is exactly some linears' input, and a linear whose
  output channels are the input channels of a linear of the same module, are candidates; each
  is kept only if folding random scales into it (``norm_offset`` 0, else 1 for ``(1 + w)``
  norms) leaves the block's output unchanged;
- value/down projections and the q·kᵀ producers (no clip search) by their names.

Routers (``gate``, ``router``, ``shared_expert_gate``) are never quantized and not traced.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitError, ModelSourceError
from lowbit.models.arch import BlockSpec, SmoothingPair
from lowbit.models.experts import ExpertCalibration, LinearExperts, set_calibration
from lowbit.models.twin_config import twin_config
from lowbit.runtime.runner import hidden_of

ROUTERS = ("gate", "router", "shared_expert_gate")
VALUE_AND_DOWN = ("v_proj", "down_proj", "fc2", "w2")
NO_CLIP = ("q_proj", "k_proj", "qkv_proj", "q_b_proj", "kv_b_proj", "q_a_proj",
           "kv_a_proj_with_mqa", "query_key_value")  # fmt: skip
_MODULE_TRAITS = (
    (("q_norm", "k_norm"), "q/k norms"),
    (("pre_feedforward_layernorm", "post_feedforward_layernorm"), "pre/post feed-forward norms"),
)
TOLERANCE = 1e-4  # relative change of the block's output that rejects a smoothing pair


@dataclass
class _Call:
    name: str
    x: torch.Tensor
    module: nn.Linear


def trace_kinds(config: Any, kinds: list[Any], blocks_path: str) -> list[BlockSpec]:
    """One block spec per block (``kinds[i]``: block i's signature), tracing the first block
    of each kind in a tiny twin of ``config``."""
    from lowbit.models.discover import block_signature

    first: dict[Any, int] = {}
    for i, kind in enumerate(kinds):
        first.setdefault(kind, i)
    model = _twin(config, max(first.values()) + 1)
    blocks = model.get_submodule(blocks_path)
    for kind, i in first.items():
        if block_signature(blocks[i]) != kind:
            raise ModelSourceError(f"block {i} of the tiny twin differs from the model's")
    inputs = _block_inputs(model, blocks)
    traced = {kind: trace_block(blocks[i], *inputs[i]) for kind, i in first.items()}
    return [_with_traits(traced[k], config, i) for i, k in enumerate(kinds)]


def _twin(config: Any, n_layers: int) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from lowbit.models.experts import linearize_experts

    torch.manual_seed(0)
    twin = twin_config(config, n_layers)
    twin._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(twin, dtype=torch.float32).eval()
    linearize_experts(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def _block_inputs(model: nn.Module, blocks: nn.ModuleList) -> list[tuple[tuple, dict]]:
    seen: list[tuple[tuple, dict]] = []

    def hook(_: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, dict(kwargs)))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in blocks]
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def trace_block(block: nn.Module, args: tuple, kwargs: dict) -> BlockSpec:
    calls, norm_out = _calls(block, args, kwargs)
    linears = {n for n, m in block.named_modules() if isinstance(m, nn.Linear) and not _router(n)}
    missing = sorted(linears - {c.name for c in calls})
    if not calls:
        kinds = sorted(
            {type(m).__name__ for n, m in block.named_modules() if "proj" in n or "fc" in n}
        )
        raise ModelSourceError(
            "its blocks call no nn.Linear layer that lowbit can quantize (projection modules: "
            f"{', '.join(kinds) or 'none'})"
        )
    if missing:
        raise ModelSourceError(f"the block never calls {', '.join(missing)}")
    groups: list[list[str]] = []
    for j, call in enumerate(calls):
        if j and call.x is calls[j - 1].x:
            groups[-1].append(call.name)
        else:
            groups.append([call.name])
    readers = _readers(calls)
    with torch.no_grad():
        reference = hidden_of(block(*args, **kwargs)).clone()
    pairs = _norm_pairs(block, args, kwargs, reference, norm_out, readers)
    pairs += _linear_pairs(block, args, kwargs, reference, calls, readers)
    leaf = [c.name for c in calls]
    modules = {n.rsplit(".", 1)[-1] for n, _ in block.named_modules()}
    traits = [t for names, t in _MODULE_TRAITS if modules & set(names)]
    traits += (
        ["attention sinks"] if any(n.endswith("sinks") for n, _ in block.named_parameters()) else []
    )
    return BlockSpec(
        sequential_groups=tuple(tuple(g) for g in groups),
        fused_groups=_fused(readers),
        value_and_down=tuple(n for n in leaf if n.rsplit(".", 1)[-1] in VALUE_AND_DOWN),
        smoothing_pairs=tuple(pairs),
        no_clip=tuple(n for n in leaf if n.rsplit(".", 1)[-1] in NO_CLIP),
        experts=tuple(n for n, m in block.named_modules() if isinstance(m, LinearExperts)),
        routers=tuple(n for n, m in block.named_modules() if _router(n) and hasattr(m, "weight")),
        traits=tuple(traits),
    )


def _router(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ROUTERS


def _calls(
    block: nn.Module, args: tuple, kwargs: dict
) -> tuple[list[_Call], dict[str, torch.Tensor]]:
    calls: list[_Call] = []
    norm_out: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear) and not _router(name):
            handles.append(module.register_forward_pre_hook(_record(calls, name)))
        elif _is_norm(module):
            handles.append(module.register_forward_hook(_keep(norm_out, name)))
    set_calibration(block, ExpertCalibration("all"))
    try:
        with torch.no_grad():
            block(*args, **kwargs)
    finally:
        set_calibration(block, None)
        for h in handles:
            h.remove()
    names = [c.name for c in calls]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelSourceError(f"the block calls {', '.join(twice)} more than once")
    return calls, norm_out


def _record(calls: list[_Call], name: str) -> Any:
    def hook(module: nn.Module, inputs: tuple) -> None:
        calls.append(_Call(name, inputs[0], module))  # type: ignore[arg-type]

    return hook


def _keep(store: dict[str, torch.Tensor], name: str) -> Any:
    def hook(_: nn.Module, __: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            store[name] = output

    return hook


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        "norm" in type(module).__name__.lower()
        and isinstance(weight, torch.Tensor)
        and (weight.dim() == 1)
    )


def _readers(calls: list[_Call]) -> list[tuple[torch.Tensor, list[_Call]]]:
    """Each distinct input tensor with the linears that read it, in call order."""
    out: list[tuple[torch.Tensor, list[_Call]]] = []
    for call in calls:
        for x, members in out:
            if x is call.x:
                members.append(call)
                break
        else:
            out.append((call.x, [call]))
    return out


def _fused(readers: list[tuple[torch.Tensor, list[_Call]]]) -> tuple[tuple[str, ...], ...]:
    fused = []
    for _, members in readers:
        by_parent: dict[str, list[str]] = {}
        for c in members:
            by_parent.setdefault(c.name.rpartition(".")[0], []).append(c.name)
        fused += [tuple(names) for names in by_parent.values() if len(names) > 1]
    return tuple(fused)


def _norm_pairs(block, args, kwargs, reference, norm_out, readers) -> list[SmoothingPair]:
    pairs = []
    for norm, out in norm_out.items():
        members = next((m for x, m in readers if x is out), None)
        if members is None:
            continue
        for offset in (0.0, 1.0):
            pair = SmoothingPair(norm, tuple(c.name for c in members), norm_offset=offset)
            if _folds(block, args, kwargs, reference, pair):
                pairs.append(pair)
                break
    return pairs


def _linear_pairs(block, args, kwargs, reference, calls, readers) -> list[SmoothingPair]:
    pairs: list[SmoothingPair] = []
    decided: dict[tuple[str, str], bool] = {}  # (prev, next) with expert indices as "*"
    for j, prev in enumerate(calls):
        parent = prev.name.rpartition(".")[0]
        for nxt in calls[j + 1 :]:
            if nxt.name.rpartition(".")[0] != parent or nxt.x is prev.x:
                continue
            if prev.module.out_features != nxt.module.in_features:
                continue
            members = next(m for x, m in readers if x is nxt.x)
            if members[0] is not nxt:
                continue
            pair = SmoothingPair(prev.name, tuple(c.name for c in members), prev_is_linear=True)
            key = (_canonical(prev.name), _canonical(nxt.name))
            if key not in decided:
                decided[key] = _folds(block, args, kwargs, reference, pair)
            if decided[key]:
                pairs.append(pair)
    return pairs


def _canonical(name: str) -> str:
    import re

    return re.sub(r"\.\d+\.", ".*.", name)


def _folds(block, args, kwargs, reference, pair: SmoothingPair) -> bool:
    """Whether folding random scales into ``pair`` leaves the block's output unchanged (for a
    pair inside one expert: the expert's output on random inputs, since the router may send
    the traced tokens elsewhere)."""
    from lowbit.models.smoothing import fold_scales

    clone = copy.deepcopy(block)
    n = clone.get_submodule(pair.linears[0]).in_features
    s = torch.rand(n, generator=torch.Generator().manual_seed(2)) * 1.5 + 0.5
    run = _expert_run(clone, pair.prev) or (lambda m: hidden_of(m(*args, **kwargs)))
    with torch.no_grad():
        before = run(clone) if run is not None else reference
        try:
            fold_scales(clone, pair, s)
        except LowbitError:  # a shape that cannot absorb the scales: no pair
            return False
        out = run(clone)
    err = (out - before).norm() / before.norm().clamp_min(1e-12)
    return bool(err < TOLERANCE)


def _expert_run(block: nn.Module, name: str) -> Any:
    """For a module inside expert e of a LinearExperts: a function of the block computing
    that expert's output on fixed random inputs; else None."""
    for path, module in block.named_modules():
        if isinstance(module, LinearExperts) and name.startswith(path + "."):
            e = int(name[len(path) + 1 :].split(".", 1)[0])
            gen = torch.Generator().manual_seed(3)
            x = torch.randn(32, module.hidden, generator=gen)

            def run(
                b: nn.Module, path: str = path, e: int = e, x: torch.Tensor = x
            ) -> torch.Tensor:
                return b.get_submodule(path)._expert(e, x)

            return run
    return None


def _with_traits(spec: BlockSpec, config: Any, i: int) -> BlockSpec:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    names = " ".join(n for g in spec.sequential_groups for n in g)
    traits = []
    if spec.experts:
        k = getattr(text, "num_experts_per_tok", "?")
        traits.append(f"mixture of experts (top {k})")
    if "shared_expert" in names:
        traits.append("shared experts")
    if "q_a_proj" in names or "kv_a_proj_with_mqa" in names:
        traits.append("multi-head latent attention")
    layer_types = getattr(text, "layer_types", None)
    if isinstance(layer_types, list) and i < len(layer_types) and "sliding" in layer_types[i]:
        traits.append("sliding-window attention")
    if any(p.norm_offset for p in spec.smoothing_pairs):
        traits.append("(1 + w) norms")
    return replace(spec, traits=spec.traits + tuple(traits))
