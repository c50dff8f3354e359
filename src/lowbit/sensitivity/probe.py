"""Measure sensitivity: quantize one layer at a time, see what the model's output loses.

For each block, in order: the block's calibration inputs (from the original model) give each
group's Hessian; every layer of the block is quantized with every spec of the menu (GPTQ with
that Hessian, or RTN); the proxies come from the quantized weight alone; the measured value is
the KL divergence of the model's next-token distribution to the original's, on the probe
windows, with only that layer quantized. The measured run starts at the layer's block, from the
block inputs stored once for the probe windows, and runs several specs as one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.algorithms import HessianAccumulator
from lowbit.errors import ConfigError, LowbitError
from lowbit.models.capture import capture_inputs
from lowbit.models.lazy import block_list
from lowbit.models.quantize import quantize_weight
from lowbit.models.sources import ModelHandle
from lowbit.plan import LayerSpec
from lowbit.sensitivity.proxies import fisher_error, hessian_error
from lowbit.sensitivity.table import Entry, LayerInfo, SensitivityTable, check_menu


@dataclass(frozen=True)
class ProbeConfig:
    """``probe_windows`` × ``probe_ctx`` tokens (the first calibration windows, cut) for the
    measured KL; ``fisher_windows`` × ``fisher_ctx`` for the Fisher estimate; the Hessians use
    every calibration window; ``batch`` specs share one run of the model."""

    probe_windows: int = 2
    probe_ctx: int = 192
    fisher_windows: int = 16
    fisher_ctx: int = 128
    batch: int = 4
    chunk_size: int = 8
    measure: bool = True
    fisher: bool = True
    blocks: tuple[int, ...] | None = None  # probe only these blocks (the table is then partial)

    def __post_init__(self) -> None:
        for name in ("probe_windows", "probe_ctx", "fisher_windows", "fisher_ctx", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"sensitivity {name} must be at least 1, got {getattr(self, name)}"
                )
        if self.probe_ctx < 2 or self.fisher_ctx < 2:
            raise ConfigError("probe and Fisher windows need at least 2 tokens")


BlockDone = Callable[[int, list[Entry]], None]


def layer_infos(model: nn.Module, handle: ModelHandle) -> tuple[LayerInfo, ...]:
    arch = handle.arch
    infos = []
    for i, block in enumerate(block_list(model, arch.blocks_path)):
        for member in arch.linear_names:
            W = block.get_submodule(member).weight
            infos.append(
                LayerInfo(
                    f"{arch.blocks_path}.{i}.{member}", i, member, int(W.shape[0]), int(W.shape[1])
                )
            )
    return tuple(infos)


def measure(
    handle: ModelHandle,
    menu: tuple[LayerSpec, ...],
    calib: torch.Tensor,
    cfg: ProbeConfig = ProbeConfig(),
    *,
    done: dict[tuple[str, int], Entry] | None = None,
    on_block: BlockDone | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityTable:
    """The sensitivity table of ``handle`` for ``menu`` on calibration windows ``calib`` (n, ctx).

    ``done`` holds entries of an interrupted run: their layers are not probed again.
    ``on_block(i, entries)`` is called after each block (to checkpoint)."""
    check_menu(menu)
    if cfg.probe_windows > calib.shape[0] or cfg.probe_ctx > calib.shape[1]:
        raise ConfigError(
            f"probe windows {cfg.probe_windows} × {cfg.probe_ctx} do not fit in the "
            f"{calib.shape[0]} × {calib.shape[1]} calibration windows; give more or shorter ones"
        )
    t_start = time.perf_counter()
    model = handle.load_model()
    infos = layer_infos(model, handle)
    entries: dict[tuple[str, int], Entry] = dict(done or {})
    probe_ids = calib[: cfg.probe_windows, : cfg.probe_ctx]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fisher = _fisher(model, handle, calib, cfg) if cfg.fisher else None
    timings["fisher_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probe = _Probe(model, handle, probe_ids, cfg.batch) if cfg.measure else None
    timings["reference_s"] = time.perf_counter() - t0
    blocks = block_list(model, handle.arch.blocks_path)
    first = blocks[0]
    hidden, kwargs = capture_inputs(model, first, calib, cfg.chunk_size)
    with torch.no_grad():
        for i, block in enumerate(blocks):
            if cfg.blocks is not None and i > max(cfg.blocks, default=-1):
                break
            todo = [x for x in infos if x.block == i and _wanted(x, menu, entries, cfg)]
            hidden, hessians = _block_hessians(block, hidden, kwargs, handle, need=bool(todo))
            new = [_probe_layer(info, block, menu, hessians, fisher, probe) for info in todo]
            flat = [e for layer_entries in new for e in layer_entries]
            entries.update({(e.layer, e.spec): e for e in flat})
            if on_block:
                on_block(i, flat)
            if progress:
                progress(i + 1, len(blocks))
    timings["total_s"] = time.perf_counter() - t_start
    return _table(handle, menu, infos, entries, len(blocks), cfg, calib, timings)


def _wanted(info: LayerInfo, menu: tuple[LayerSpec, ...], entries: dict, cfg: ProbeConfig) -> bool:
    if cfg.blocks is not None and info.block not in cfg.blocks:
        return False
    return any((info.name, s) not in entries for s in range(len(menu)))


def _table(
    handle: ModelHandle,
    menu: tuple[LayerSpec, ...],
    infos: tuple[LayerInfo, ...],
    entries: dict[tuple[str, int], Entry],
    n_blocks: int,
    cfg: ProbeConfig,
    calib: torch.Tensor,
    timings: dict[str, float],
) -> SensitivityTable:
    arch = handle.arch
    fused = tuple(
        tuple(f"{arch.blocks_path}.{i}.{m}" for m in group)
        for i in range(n_blocks)
        for group in arch.fused_groups
    )
    return SensitivityTable(
        model={"source": handle.source, "fingerprint": handle.fingerprint},
        menu=menu,
        layers=infos,
        entries=entries,
        fused=fused,
        value_and_down=arch.value_and_down,
        n_blocks=n_blocks,
        other_bytes=_other_bytes(handle, infos),
        probe={
            "calibration_windows": int(calib.shape[0]),
            "calibration_ctx": int(calib.shape[1]),
            "probe_windows": cfg.probe_windows if cfg.measure else 0,
            "probe_ctx": cfg.probe_ctx,
            "fisher_windows": cfg.fisher_windows if cfg.fisher else 0,
            "fisher_ctx": cfg.fisher_ctx,
        },
        timings=timings,
    )


def _other_bytes(handle: ModelHandle, infos: tuple[LayerInfo, ...]) -> int:
    """Stored bytes of every tensor that is not one of the table's linear weights."""
    from lowbit.models.footprint import stored_bits

    linear = {f"{x.name}.weight" for x in infos}
    return (sum(bits for key, _, bits in stored_bits(handle) if key not in linear) + 7) // 8


def _block_hessians(
    block: nn.Module,
    hidden: list[torch.Tensor],
    kwargs: Sequence[dict[str, Any]],
    handle: ModelHandle,
    *,
    need: bool,
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Run the original ``block`` on every chunk (outputs replace ``hidden``); with ``need``,
    the Hessian of each sequential group's inputs, keyed by member name."""
    groups = handle.arch.sequential_groups
    stats = [HessianAccumulator(int(block.get_submodule(g[0]).weight.shape[1])) for g in groups]
    handles = []
    if need:
        for g, group in enumerate(groups):
            hook = _stat_hook(stats[g])
            handles.append(block.get_submodule(group[0]).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            out = [_hidden(block(h, **kw)) for h, kw in zip(hidden, kwargs, strict=True)]
    finally:
        for h in handles:
            h.remove()
    hessians = {}
    if need:
        for g, group in enumerate(groups):
            H = stats[g].hessian()
            hessians.update({member: H for member in group})
    return out, hessians


def _stat_hook(stat: HessianAccumulator) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple) -> None:
        stat.add_batch(args[0])

    return hook


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _probe_layer(
    info: LayerInfo,
    block: nn.Module,
    menu: tuple[LayerSpec, ...],
    hessians: dict[str, torch.Tensor],
    fisher: dict[str, torch.Tensor] | None,
    probe: _Probe | None,
) -> list[Entry]:
    module = block.get_submodule(info.module)
    W = module.weight.data
    if not torch.isfinite(W).all():
        raise LowbitError(
            f"layer {info.name} has NaN or infinite weights; the checkpoint is corrupt"
        )
    H = hessians[info.module]
    h_diag = torch.diagonal(H).clone()
    F = None if fisher is None else fisher[info.name]
    rows: list[dict[str, Any]] = []
    for s, spec in enumerate(menu):
        t0 = time.perf_counter()
        qw, _, _ = quantize_weight(info.name, W, spec, H)
        Wq = qw.dequantize().to(W.dtype)
        rows.append(
            {
                "spec": s,
                "Wq": Wq,
                "bits": qw.n_bits(),
                "hessian": hessian_error(W, Wq, h_diag),
                "fisher": None if F is None else fisher_error(W, Wq, F),
                "seconds": time.perf_counter() - t0,
            }
        )
    if probe is not None:
        probe.measure(info, module, rows)
    return [
        Entry(info.name, r["spec"], r["bits"], r.get("kl"), r["hessian"], r["fisher"], r["seconds"])
        for r in rows
    ]


class _Probe:
    """The measured KL divergence of the model with one layer replaced, on fixed windows."""

    def __init__(
        self, model: nn.Module, handle: ModelHandle, ids: torch.Tensor, batch: int
    ) -> None:
        self.model, self.ids, self.batch = model, ids, batch
        self.blocks_path = handle.arch.blocks_path
        self.blocks = block_list(model, self.blocks_path)
        self.inputs: list[torch.Tensor] = []
        handles = [b.register_forward_pre_hook(self._record, with_kwargs=True) for b in self.blocks]
        try:
            with torch.inference_mode():
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        finally:
            for h in handles:
                h.remove()
        self.ref_logp = torch.log_softmax(logits, dim=-1)
        self.ref_p = self.ref_logp.exp()

    def _record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def measure(self, info: LayerInfo, module: nn.Module, rows: list[dict[str, Any]]) -> None:
        """Set ``row["kl"]`` for each row (a candidate weight ``row["Wq"]`` of ``module``)."""
        for start in range(0, len(rows), self.batch):
            part = rows[start : start + self.batch]
            t0 = time.perf_counter()
            kls = self._run(info, module, [r["Wq"] for r in part])
            share = (time.perf_counter() - t0) / len(part)
            for r, kl in zip(part, kls, strict=True):
                r["kl"], r["seconds"] = kl, r["seconds"] + share

    def _run(self, info: LayerInfo, module: nn.Module, weights: list[torch.Tensor]) -> list[float]:
        k, n = len(weights), self.ids.shape[0]
        parent_path, attr = self.blocks_path.rsplit(".", 1)
        parent = self.model.get_submodule(parent_path)
        block = self.blocks[info.block]
        start = self.inputs[info.block].repeat(k, 1, 1)
        swap_parent, swap_attr = _parent(block, info.module)
        stacked = _StackedLinear(weights, module.bias)

        def feed(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            if args:
                return (start, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": start}

        hook = block.register_forward_pre_hook(feed, with_kwargs=True)
        setattr(parent, attr, nn.ModuleList(list(self.blocks)[info.block :]))
        setattr(swap_parent, swap_attr, stacked)
        try:
            with torch.inference_mode():
                logits = self.model(input_ids=self.ids.repeat(k, 1), use_cache=False).logits
        finally:
            hook.remove()
            setattr(swap_parent, swap_attr, module)
            setattr(parent, attr, self.blocks)
        kls = []
        for c in range(k):
            logp = torch.log_softmax(logits[c * n : (c + 1) * n, :-1].float(), dim=-1)
            kl = (self.ref_p * (self.ref_logp - logp)).sum(-1).clamp_min_(0.0)
            kls.append(float(kl.double().mean()))
        return kls


class _StackedLinear(nn.Module):
    """A linear layer with weight k for the k-th of len(weights) equal slices of the batch."""

    def __init__(self, weights: list[torch.Tensor], bias: torch.Tensor | None) -> None:
        super().__init__()
        self.W = torch.stack([w.T for w in weights])  # (k, in, out)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # rows of x are ordered by batch entry whether x is (batch, T, in) or flattened
        y = torch.bmm(x.reshape(self.W.shape[0], -1, x.shape[-1]), self.W)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.W.shape[-1])


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    if "." not in path:
        return root, path
    head, attr = path.rsplit(".", 1)
    return root.get_submodule(head), attr


def _fisher(
    model: nn.Module, handle: ModelHandle, calib: torch.Tensor, cfg: ProbeConfig
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of every block linear's weight, per token: T · E_w[g_w²], with
    g_w the gradient of window w's mean token negative log-likelihood (T tokens per window)."""
    names = [x.name for x in layer_infos(model, handle)]
    weights = {name: model.get_submodule(name).weight for name in names}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    acc = {name: torch.zeros_like(w) for name, w in weights.items()}
    ids = calib[: cfg.fisher_windows, : cfg.fisher_ctx]
    try:
        for row in ids:
            x = row[None]
            out = model(input_ids=x, labels=x, use_cache=False)
            grads = torch.autograd.grad(out.loss, list(weights.values()))
            for name, g in zip(weights, grads, strict=True):
                acc[name].add_(g.pow(2))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    scale = (ids.shape[1] - 1) / ids.shape[0]
    return {name: a.mul_(scale) for name, a in acc.items()}
