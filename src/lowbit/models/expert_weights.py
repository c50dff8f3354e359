"""Where each linearized expert's tensors are stored in a checkpoint.

:class:`~lowbit.models.experts.LinearExperts` names expert ``e``'s projections
``{experts}.{e}.gate_proj.weight`` (and ``up_proj``, ``down_proj``, biases). A checkpoint
stores them in one of three ways, found per key from what the files hold:

1. under that very name (Qwen-MoE, DeepSeek-V3/Kimi K2);
2. per expert under the names of transformers' own checkpoint conversion mapping for the
   family (``get_checkpoint_conversion_mapping``: Mixtral's ``block_sparse_moe.experts.{e}.w1``
   is the gate, ``w3`` the up and ``w2`` the down projection), with the mapping's renamings
   undone;
3. fused, as the transformers module holds them (GPT-OSS's ``experts.gate_up_proj``, possibly
   transposed and interleaved): the fused tensor is read once per request and split
   (:func:`~lowbit.models.experts.split_fused`).

A key found in none of these is an error naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any

import torch

from lowbit.errors import ModelSourceError
from lowbit.models.experts import FusedLayout, LinearExperts, split_fused

_ROLE = re.compile(
    r"^(?P<path>.+)\.(?P<e>\d+)\.(?P<role>gate_proj|up_proj|down_proj)\.(?P<kind>weight|bias)$"
)
_FUSED = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "down_proj": "down_proj"}


class ExpertWeights:
    """``base`` (a WeightSource of a checkpoint) with the keys of the linearized experts
    ``experts`` (module path, e.g. ``model.layers.1.mlp.experts`` → module) resolved to the
    stored tensors."""

    def __init__(
        self, base: Any, experts: dict[str, LinearExperts], model_type: str, where: str
    ) -> None:
        self.base, self.experts, self.where = base, experts, where
        self._base_keys = base.keys()
        self._renames, self._sources = _conversion(model_type)
        # stored name of each renamed tensor under its in-memory name (e.g. Mixtral's router)
        self._alias = {_forward(k, self._renames): k for k in self._base_keys}
        self._alias = {new: old for new, old in self._alias.items() if new != old}

    def keys(self) -> set[str]:
        return (
            self._base_keys
            | set(self._alias)
            | {
                f"{path}.{e}.{name}"
                for path, module in self.experts.items()
                for e in range(module.num_experts)
                for name, _ in module[e].named_parameters()
            }
        )

    def read(self, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        plain = [k for k in keys if k in self._base_keys or not self._is_expert(k)]
        stored = {k: k if k in self._base_keys else self._alias.get(k, k) for k in plain}
        read = self.base.read(list(stored.values()), device)
        out = {k: read[v] for k, v in stored.items()}
        fused: dict[str, dict[str, torch.Tensor]] = {}
        for key in keys:
            if key not in out:
                out[key] = self._expert_tensor(key, device, fused)
        return out

    def _is_expert(self, key: str) -> bool:
        match = _ROLE.match(key)
        return bool(match) and match["path"] in self.experts

    def _expert_tensor(
        self, key: str, device: torch.device, fused: dict[str, dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        match = _ROLE.match(key)
        assert match is not None
        path = match["path"]
        e, role, kind = int(match["e"]), match["role"], match["kind"]
        stored = self._per_expert_key(path, e, role, kind)
        if stored is not None:
            return self.base.read([stored], device)[stored]
        module = self.experts[path]
        if path not in fused:
            fused[path] = self._fused_tensors(path, module.layout, device)
        return split_fused(module.layout, fused[path], e, module.inter)[f"{role}.{kind}"]

    def _per_expert_key(self, path: str, e: int, role: str, kind: str) -> str | None:
        """The stored per-expert name, if the checkpoint has one (ways 1 and 2)."""
        candidates = [f"{path}.{e}.{role}.{kind}"]
        parent = path.rsplit(".", 1)[0]  # the MoE module holding ``experts``
        for pattern in self._sources.get(role, ()):  # e.g. ".experts.*.w1.weight"
            if kind == "weight":
                candidates.append(parent + pattern.replace("*", str(e)))
        for name in list(candidates):
            candidates.extend(_renamed(name, self._renames)[1:])
        return next((c for c in candidates if c in self._base_keys), None)

    def _fused_tensors(
        self, path: str, layout: FusedLayout, device: torch.device
    ) -> dict[str, torch.Tensor]:
        names = ["down_proj", "gate_up_proj" if layout.has_gate else "up_proj"]
        names += [f"{n}_bias" for n in names] if layout.has_bias else []
        keys = {n: self._stored_fused(f"{path}.{n}") for n in names}
        tensors = self.base.read(list(keys.values()), device)
        return {n: tensors[k] for n, k in keys.items()}

    def _stored_fused(self, key: str) -> str:
        for candidate in _renamed(key, self._renames):
            if candidate in self._base_keys:
                return candidate
        raise ModelSourceError(
            f"{self.where}: the experts' weights {key!r} are in no weight file, neither per "
            "expert nor fused; this checkpoint's expert layout is not understood"
        )


@cache
def _conversion(model_type: str) -> tuple[tuple[tuple[str, str], ...], dict[str, tuple[str, ...]]]:
    """(the family's plain renamings as (in-memory, stored) substrings, the per-expert source
    patterns of each role) from transformers' checkpoint conversion mapping."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # an older transformers: checkpoints are read by their own names
        return (), {}
    undo: list[tuple[str, str]] = []
    sources: dict[str, tuple[str, ...]] = {}
    for transform in get_checkpoint_conversion_mapping(model_type) or ():
        src, dst = _patterns(transform.source_patterns), _patterns(transform.target_patterns)
        if type(transform).__name__ == "WeightRenaming" and len(src) == len(dst) == 1:
            if _plain(src[0]) and _plain(dst[0]):
                undo.append((dst[0], src[0]))
        elif type(transform).__name__ == "WeightConverter" and len(dst) == 1:
            target = dst[0].rsplit(".", 1)[-1]
            roles = [r for r, f in _FUSED.items() if f == target]
            if target == "gate_up_proj" and len(src) == 2:
                sources["gate_proj"], sources["up_proj"] = (_dot(src[0]),), (_dot(src[1]),)
            elif len(roles) == 1 and len(src) == 1:
                sources[roles[0]] = (_dot(src[0]),)
    return tuple(undo), {k: tuple(p for p in v if ".experts.*." in p) for k, v in sources.items()}


def _patterns(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or ())


def _plain(pattern: str) -> bool:
    return re.escape(pattern) == pattern.replace(".", r"\.")


def _dot(pattern: str) -> str:
    """``mlp.experts.*.w1.weight`` → ``.experts.*.w1.weight`` (relative to the MoE module's
    path, which ends before ``.experts``)."""
    i = pattern.find(".experts.")
    return pattern[i:] if i >= 0 else "." + pattern.split("experts.", 1)[-1]


def stored_expert_names(model_type: str) -> str:
    """How a family's checkpoints store experts, from transformers' conversion mapping:
    ``"lowbit"`` (per expert as ``experts.{e}.gate_proj``), ``"renamed"`` (per expert under
    other names, e.g. Mixtral's w1/w3/w2) or ``"fused"`` (as the module holds them)."""
    _, sources = _conversion(model_type)
    if not sources:
        return "fused"
    ok = all(p.endswith(f".experts.*.{role}.weight") for role, ps in sources.items() for p in ps)
    return "lowbit" if ok else "renamed"


def canonical_entries(
    entries: Iterable[tuple[str, int, int]], arch: Any, model_type: str
) -> Iterator[tuple[str, int, int]]:
    """Stored tensors (key, elements, bits) under lowbit's names: a per-expert tensor stored
    under another name (Mixtral's w1) is named as its linear, a fused experts tensor (GPT-OSS)
    is split evenly into its experts' linears; everything else passes unchanged. Footprints
    then count each expert linear once, quantized or kept."""
    renames, sources = _conversion(model_type)
    alias: dict[str, str] = {}
    fused: dict[str, list[tuple[str, int]]] = {}
    for i, block in enumerate(arch.blocks):
        for path in block.experts:
            full = f"{arch.blocks_path}.{i}.{path}"
            members = [
                n[len(path) + 1 :].split(".")
                for n in block.linear_names
                if n.startswith(path + ".")
            ]
            roles = sorted({m[1] for m in members})
            experts = sorted({int(m[0]) for m in members})
            parts = len(experts) * (2 if {"gate_proj", "up_proj"} <= set(roles) else 1)
            for e in experts:
                for role in roles:
                    canon = f"{full}.{e}.{role}.weight"
                    for pattern in sources.get(role, ()):
                        _aliases(
                            full.rsplit(".", 1)[0] + pattern.replace("*", str(e)),
                            renames,
                            alias,
                            canon,
                        )
                    share = parts if role != "down_proj" else len(experts)
                    for key in _renamed(f"{full}.{_FUSED[role]}", renames):
                        fused.setdefault(key, []).append((canon, share))
    for key, n, bits in entries:
        if key in alias:
            yield alias[key], n, bits
        elif key in fused:
            for canon, share in fused[key]:
                yield canon, n // share, bits // share
        else:
            yield key, n, bits


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> list[str]:
    """``key`` and its stored candidates: each renaming undone alone, then all of them."""
    out = [key, *(key.replace(new, old) for new, old in renames if new in key)]
    chained = key
    for new, old in renames:
        chained = chained.replace(new, old)
    return list(dict.fromkeys([*out, chained]))


def _forward(stored: str, renames: tuple[tuple[str, str], ...]) -> str:
    """A stored key under its in-memory name (every renaming applied)."""
    for new, old in renames:
        stored = stored.replace(old, new)
    return stored


def _aliases(
    key: str, renames: tuple[tuple[str, str], ...], alias: dict[str, str], canon: str
) -> None:
    for stored in _renamed(key, renames):
        alias[stored] = canon
