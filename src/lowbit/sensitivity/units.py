"""The units of a sensitivity table: what the probes quantize together and the allocation gives
one spec.

A dense linear is its own unit. The experts of a mixture of experts are linearized as
``{experts}.{e}.{projection}`` (:mod:`lowbit.models.experts`); serving engines run one
projection of every expert of a block as one grouped matmul with one scheme, and a real MoE
has thousands of experts' linears, so by default (``"projection"``) one projection of every
expert of a block is one unit: its name is the plan rule ``re:`` that matches exactly those
linears (``re:model\\.layers\\.3\\.mlp\\.experts\\.\\d+\\.gate_proj``), so a plan names it in
one readable rule. ``"expert"`` keeps every expert's linear a unit of its own. Linears outside
an experts module (attention, a dense block's MLP, shared experts) are always their own unit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from torch import nn

from lowbit.errors import ConfigError, ModelSourceError
from lowbit.models.arch import ArchSpec, BlockSpec
from lowbit.models.lazy import block_list
from lowbit.sensitivity.table import LayerInfo

ExpertUnits = Literal["projection", "expert"]
EXPERT_UNITS: tuple[str, ...] = ("projection", "expert")


def check_expert_units(value: str) -> None:
    if value not in EXPERT_UNITS:
        raise ConfigError(
            f"expert units {value!r} is unknown; use 'projection' (one unit per projection of "
            "a block's experts) or 'expert' (every expert's linear its own unit)"
        )


def expert_projection(module: str, spec: BlockSpec) -> tuple[str, str] | None:
    """(experts path, projection) when ``module`` (a name inside the block) is
    ``{experts}.{e}.{projection}`` of one of the block's experts modules, else None."""
    for path in spec.experts:
        rest = module.removeprefix(f"{path}.")
        if rest != module:
            e, _, projection = rest.partition(".")
            if e.isdigit() and projection:
                return path, projection
    return None


def unit_pattern(prefix: str, path: str, projection: str) -> str:
    """The plan rule that matches ``projection`` of every expert of ``{prefix}.{path}``."""
    return f"re:{re.escape(f'{prefix}.{path}.')}\\d+{re.escape(f'.{projection}')}"


def layer_infos(
    model: nn.Module, arch: ArchSpec, expert_units: ExpertUnits = "projection"
) -> tuple[LayerInfo, ...]:
    """The units of every block of ``model`` (materialized or a meta-device skeleton), in the
    order of the blocks' linears (a unit where its first member is)."""
    check_expert_units(expert_units)
    infos: list[LayerInfo] = []
    for i, block in enumerate(block_list(model, arch.blocks_path)):
        infos += _block_units(block, arch, i, expert_units)
    return tuple(infos)


def _block_units(
    block: nn.Module, arch: ArchSpec, i: int, expert_units: ExpertUnits
) -> list[LayerInfo]:
    spec, prefix = arch.block(i), f"{arch.blocks_path}.{i}"
    units: dict[str, list[tuple[str, tuple[int, int]]]] = {}  # key → (member, shape)
    for member in spec.linear_names:
        W = block.get_submodule(member).weight
        found = expert_projection(member, spec) if expert_units == "projection" else None
        key = member if found is None else f"{found[0]}.*.{found[1]}"
        units.setdefault(key, []).append((member, (int(W.shape[0]), int(W.shape[1]))))
    infos = []
    for key, members in units.items():
        (out, inp), shapes = members[0][1], {shape for _, shape in members}
        if len(members) == 1 and key == members[0][0]:
            infos.append(LayerInfo(f"{prefix}.{key}", i, key, out, inp))
            continue
        if len(shapes) > 1:
            raise ModelSourceError(
                f"block {i}: the experts' {key} have different shapes {sorted(shapes)}; "
                "probe them as separate units (expert units 'expert')"
            )
        path, _, projection = key.partition(".*.")
        infos.append(
            LayerInfo(
                unit_pattern(prefix, path, projection),
                i,
                key,
                out,
                inp,
                tuple(f"{prefix}.{m}" for m, _ in members),
            )
        )
    return infos


def unit_groups(
    groups: Iterable[tuple[str, ...]], infos: Iterable[LayerInfo]
) -> tuple[tuple[str, ...], ...]:
    """Groups of linears (full names) that must share a spec, as groups of units: each member
    becomes its unit, groups that became one are listed once, a group left with one unit is
    dropped (experts e's gate and up of a block: the block's gate unit and up unit)."""
    unit_of = {m: x.name for x in infos for m in x.member_names}
    out: dict[tuple[str, ...], None] = {}
    for group in groups:
        units = tuple(dict.fromkeys(unit_of.get(m, m) for m in group))
        if len(units) > 1:
            out[units] = None
    return tuple(out)


def unit_modules(
    modules: Iterable[str], infos: Iterable[LayerInfo], blocks_path: str
) -> tuple[str, ...]:
    """``modules`` (names inside a block, e.g. the value and down projections) with the
    readable name of every unit that has one of them as a member added."""
    names = dict.fromkeys(modules)
    for x in infos:
        prefix = f"{blocks_path}.{x.block}."
        if x.members and any(m.removeprefix(prefix) in names for m in x.members):
            names.setdefault(x.module)
    return tuple(names)


def relative_members(info: LayerInfo, blocks_path: str) -> tuple[str, ...]:
    """The names of ``info``'s members inside their block."""
    prefix = f"{blocks_path}.{info.block}."
    return tuple(m.removeprefix(prefix) for m in info.members) or (info.module,)
