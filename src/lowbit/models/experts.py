"""Mixtures of experts as linear layers: each expert's projections become ``nn.Linear`` modules.

transformers 5 stores a block's experts as fused 3-D parameters (``experts.gate_up_proj``
(E, 2I, H), ``experts.down_proj`` (E, H, I), possibly transposed, interleaved, with biases;
the layout is declared by ``@use_experts_implementation``'s flags on the module). lowbit
replaces each such module by :class:`LinearExperts`, a list of experts with ``gate_proj``,
``up_proj`` and ``down_proj`` linears, named ``experts.{e}.gate_proj`` as most checkpoints
(Qwen-MoE, DeepSeek) store them. The routing is the original's: each expert sees the tokens
routed to it, its output is weighted by the router and added. Every stage (plans, hooks,
GPTQ, fake quantization, export) then sees plain linears.

**Calibration** (:class:`~lowbit.models.pipeline.ExpertCalibration`): the router sends few
tokens to some experts and none to others, so a Hessian from routed tokens only can be
empty. While calibrating, each expert's linears are *called* on a calibration input chosen
by the policy, and the block's output is still the routed one (the rows of routed tokens,
weighted by the router):

- ``all`` (default): every calibration token goes through every expert (the anchors' approach:
  llm-compressor's ``calibrate_all_experts``, GPTQModel's MoE mode); Hessians see all tokens;
- ``routed``: each expert's Hessian comes from the tokens routed to it; an expert with fewer
  than ``min_tokens`` routed tokens in a chunk falls back to every token of that chunk, so no
  expert is left uncalibrated.

The routed token count of every expert is counted either way, per forward call
(:attr:`LinearExperts.calls`; :func:`routed_counts` sums a block's last pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.errors import ModelSourceError
from lowbit.models.pipeline import ExpertCalibration


@dataclass(frozen=True)
class FusedLayout:
    """How a fused experts module stores its weights (the decorator's flags)."""

    has_gate: bool
    has_bias: bool
    transposed: bool
    concatenated: bool

    @classmethod
    def of(cls, module: nn.Module) -> FusedLayout:
        return cls(
            bool(getattr(module, "has_gate", True)),
            bool(getattr(module, "has_bias", False)),
            bool(getattr(module, "is_transposed", False)),
            bool(getattr(module, "is_concatenated", True)),
        )


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers experts module with 3-D weights (``down_proj`` and ``gate_up_proj`` or
    ``up_proj``)."""
    down = getattr(module, "down_proj", None)
    up = getattr(module, "gate_up_proj", getattr(module, "up_proj", None))
    return (
        isinstance(down, nn.Parameter)
        and isinstance(up, nn.Parameter)
        and down.dim() == 3
        and up.dim() == 3
    )


class ExpertMLP(nn.Module):
    def __init__(self, hidden: int, inter: int, layout: FusedLayout, like: torch.Tensor) -> None:
        super().__init__()
        kw = {"bias": layout.has_bias, "device": like.device, "dtype": like.dtype}
        if layout.has_gate:
            self.gate_proj = nn.Linear(hidden, inter, **kw)
        self.up_proj = nn.Linear(hidden, inter, **kw)
        self.down_proj = nn.Linear(inter, hidden, **kw)


class LinearExperts(nn.Module):
    """The experts of one block as linears, routed as the fused module was."""

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.layout = FusedLayout.of(fused)
        down = fused.down_proj
        n, a, b = down.shape
        hidden, inter = (b, a) if self.layout.transposed else (a, b)
        self.num_experts, self.hidden, self.inter = int(n), int(hidden), int(inter)
        for e in range(self.num_experts):  # children "0", "1", …: experts.{e}.gate_proj
            self.add_module(str(e), ExpertMLP(self.hidden, self.inter, self.layout, down))
        self.__dict__["_fused"] = fused  # its _apply_gate and act_fn; not a submodule
        self.calibration: ExpertCalibration | None = None
        # while calibrating, per forward call: (routed tokens per expert, experts that fell
        # back to every token under the "routed" policy)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __getitem__(self, e: int) -> ExpertMLP:
        return self._modules[str(e)]  # type: ignore[return-value]

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        flat = top_k_index.reshape(hidden_states.shape[0], -1)
        if self.calibration is not None:
            self._count(flat)
        for e in range(self.num_experts):
            token, pos = torch.where(flat == e)
            if self.calibration is None and token.numel() == 0:
                continue
            y = self._run(e, hidden_states, token)
            y = y * top_k_weights[token, pos, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def _count(self, flat: torch.Tensor) -> None:
        assert self.calibration is not None
        counts = torch.bincount(flat.reshape(-1).cpu(), minlength=self.num_experts)
        counts = counts[: self.num_experts]
        fell_back = (counts < self.calibration.min_tokens) & (self.calibration.policy == "routed")
        self.calls.append((counts, fell_back))

    def _run(self, e: int, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on the routed rows ``token`` of ``x``; while calibrating, its linears
        are called on the policy's rows and the routed rows are taken from the result."""
        calib = self.calibration
        if calib is None:
            return self._expert(e, x[token])
        if calib.policy == "routed" and token.numel() >= calib.min_tokens:
            return self._expert(e, x[token])
        return self._expert(e, x)[token]  # every token through the expert

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        expert = self[e]
        fused = self.__dict__["_fused"]
        if not self.layout.has_gate:
            return expert.down_proj(fused.act_fn(expert.up_proj(x)))
        gate = expert.gate_proj(x)
        up = expert.up_proj(x)
        if self.layout.concatenated:
            gate_up = torch.cat([gate, up], dim=-1)
        else:
            gate_up = torch.stack([gate, up], dim=-1).flatten(-2)
        return expert.down_proj(fused._apply_gate(gate_up))


def linearize_experts(model: nn.Module) -> list[str]:
    """Replace every fused experts module of ``model`` by :class:`LinearExperts` (on the
    same device, without values when the model is on ``meta``); returns their paths."""
    found = [(name, m) for name, m in model.named_modules() if is_fused_experts(m)]
    for name, module in found:
        parent, _, attr = name.rpartition(".")
        if getattr(module, "has_post_expert_norm", False):
            raise ModelSourceError(
                f"{name}: experts module {type(module).__name__} normalizes each expert's "
                "output (post_expert_norm), which lowbit's per-expert linears do not carry yet; "
                "this model cannot be run by lowbit"
            )
        if not hasattr(module, "_apply_gate") and getattr(module, "has_gate", True):
            raise ModelSourceError(
                f"{name}: experts module {type(module).__name__} has fused 3-D weights but no "
                "gating function lowbit can call; this layout is not understood"
            )
        linear = LinearExperts(module)
        if module.down_proj.device.type != "meta":
            copy_fused_into(linear, {k: v.data for k, v in module.named_parameters()})
        model.get_submodule(parent).register_module(attr, linear)
    return [name for name, _ in found]


def split_fused(
    layout: FusedLayout, tensors: dict[str, torch.Tensor], e: int, inter: int
) -> dict[str, torch.Tensor]:
    """Expert ``e``'s linear weights (``gate_proj.weight`` …, (out, in)) from the fused
    tensors (``gate_up_proj``, ``down_proj`` and their ``_bias``)."""
    out: dict[str, torch.Tensor] = {}
    down = tensors["down_proj"][e]
    out["down_proj.weight"] = down.t() if layout.transposed else down
    if layout.has_bias:
        out["down_proj.bias"] = tensors["down_proj_bias"][e]
    if not layout.has_gate:
        up = tensors["up_proj"][e]
        out["up_proj.weight"] = up.t() if layout.transposed else up
        if layout.has_bias:
            out["up_proj.bias"] = tensors["up_proj_bias"][e]
        return out
    gate_up = tensors["gate_up_proj"][e]
    gate_up = gate_up.t() if layout.transposed else gate_up  # (2I, H)
    pick = _halves(layout, inter)
    out["gate_proj.weight"], out["up_proj.weight"] = gate_up[pick[0]], gate_up[pick[1]]
    if layout.has_bias:
        bias = tensors["gate_up_proj_bias"][e]
        out["gate_proj.bias"], out["up_proj.bias"] = bias[pick[0]], bias[pick[1]]
    return {k: v.contiguous() for k, v in out.items()}


def _halves(layout: FusedLayout, inter: int) -> tuple[slice, slice]:
    if layout.concatenated:
        return slice(0, inter), slice(inter, 2 * inter)
    return slice(0, 2 * inter, 2), slice(1, 2 * inter, 2)


def copy_fused_into(linear: LinearExperts, tensors: dict[str, torch.Tensor]) -> None:
    for e in range(linear.num_experts):
        for key, value in split_fused(linear.layout, tensors, e, linear.inter).items():
            module_name, attr = key.rsplit(".", 1)
            module = linear[e].get_submodule(module_name)
            setattr(module, attr, nn.Parameter(value.clone(), requires_grad=False))


def expert_modules(model: nn.Module) -> list[tuple[str, LinearExperts]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LinearExperts)]


def set_calibration(model: nn.Module, calibration: ExpertCalibration | None) -> None:
    """Put every :class:`LinearExperts` of ``model`` in (or out of) calibration mode."""
    for _, module in expert_modules(model):
        module.calibration = calibration


def routed_counts(module: LinearExperts, calls: int) -> dict[str, Any]:
    """Routed tokens per expert and the experts that fell back to every token, over the last
    ``calls`` forward calls (the block's final pass over every chunk); clears the record."""
    last = module.calls[-calls:] if calls else []
    module.calls.clear()
    if not last:
        n = module.num_experts
        return {"routed_tokens": [0] * n, "unrouted": n, "fell_back": 0}
    counts = torch.stack([c for c, _ in last]).sum(0)
    fell = torch.stack([f for _, f in last]).any(0)
    return {
        "routed_tokens": [int(c) for c in counts],
        "unrouted": int((counts == 0).sum()),
        "fell_back": int(fell.sum()),
    }
