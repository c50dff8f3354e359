"""The allocation problem as data: units (a layer, or layers that must share one spec), the
allowed specs of each, their stored bits and predicted loss, and a budget.

No torch and no model: everything comes from a sensitivity table.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from lowbit.errors import ConfigError
from lowbit.sensitivity.table import METRICS, SensitivityTable


@dataclass(frozen=True)
class AvgBits:
    """Average stored bits per weight over the table's linear layers (scales included)."""

    bits: float

    def __post_init__(self) -> None:
        if not self.bits > 0:
            raise ConfigError(f"the bits-per-weight budget must be positive, got {self.bits}")

    def linear_bits(self, problem: Problem) -> float:
        return self.bits * problem.n_weights

    def describe(self, linear_bits: float, problem: Problem) -> str:
        return f"{linear_bits / problem.n_weights:.4f} bits per weight"


@dataclass(frozen=True)
class MaxBytes:
    """Stored bytes of the whole model: the linear layers plus everything kept as stored."""

    bytes: int

    def __post_init__(self) -> None:
        if self.bytes <= 0:
            raise ConfigError(f"the byte budget must be positive, got {self.bytes}")

    def linear_bits(self, problem: Problem) -> float:
        return (self.bytes - problem.other_bytes) * 8.0

    def describe(self, linear_bits: float, problem: Problem) -> str:
        return f"{int(linear_bits // 8 + problem.other_bytes):,} bytes"


Budget = AvgBits | MaxBytes


@dataclass(frozen=True)
class Unit:
    """Layers that get one spec together; ``options`` are the allowed menu indices."""

    layers: tuple[str, ...]
    options: tuple[int, ...]


PairKey = tuple[str, int, str, int]  # (layer a, spec of a, layer b, spec of b)


@dataclass(frozen=True)
class Problem:
    """``pairs``: corrections to the summed losses, keyed by (unit i, spec s, unit j, spec t)
    with i < j: the loss of i at s and j at t together minus their two single losses. A pair
    of layers within one unit is folded into ``unit_extra`` (the unit's first layer, spec), as
    the unit takes one spec."""

    units: tuple[Unit, ...]
    bits: dict[tuple[str, int], int]
    loss: dict[tuple[str, int], float]
    n_weights: int
    other_bytes: int
    labels: tuple[str, ...]
    pairs: dict[tuple[int, int, int, int], float] = field(default_factory=dict)
    unit_extra: dict[tuple[str, int], float] = field(default_factory=dict)

    def unit_bits(self, u: Unit, s: int) -> int:
        return sum(self.bits[(name, s)] for name in u.layers)

    def unit_loss(self, u: Unit, s: int) -> float:
        extra = self.unit_extra.get((u.layers[0], s), 0.0)
        return sum(self.loss[(name, s)] for name in u.layers) + extra

    def admits(self, choice: Mapping[str, int]) -> bool:
        """Whether ``choice`` gives each unit's layers one spec among the unit's options."""
        return all(
            len({choice[n] for n in u.layers}) == 1 and choice[u.layers[0]] in u.options
            for u in self.units
        )

    def unit_of(self) -> dict[str, int]:
        return {n: i for i, u in enumerate(self.units) for n in u.layers}

    def predicted(self, choice: Mapping[str, int]) -> float:
        """Summed single losses plus every pair term whose two units take its two specs."""
        total = sum(self.loss[(n, s)] for n, s in choice.items())
        if not (self.pairs or self.unit_extra):
            return total
        by_unit = {i: choice[u.layers[0]] for i, u in enumerate(self.units)}
        total += sum(d for (n, s), d in self.unit_extra.items() if choice[n] == s)
        return total + sum(
            d for (i, s, j, t), d in self.pairs.items() if by_unit[i] == s and by_unit[j] == t
        )

    def extremes(self) -> tuple[int, int]:
        """Fewest and most stored bits any assignment can have."""
        lo = sum(min(self.unit_bits(u, s) for s in u.options) for u in self.units)
        hi = sum(max(self.unit_bits(u, s) for s in u.options) for u in self.units)
        return lo, hi


def build_problem(
    table: SensitivityTable,
    metric: str = "kl",
    *,
    fuse: bool = True,
    pins: dict[str, int] | None = None,
    ties: Sequence[Sequence[str]] = (),
    allowed: Mapping[str, Collection[int]] | None = None,
    pairs: Mapping[PairKey, float] | None = None,
) -> Problem:
    """Units from ``table``: fused groups share a spec when ``fuse``; ``pins`` maps exact layer
    names or ``re:`` patterns to a menu index they must take (a pin that names or matches one
    linear of a table unit, e.g. one expert's ``gate_proj``, pins the whole unit); ``ties``:
    further groups of table layers that must share one spec (e.g. a serving engine's); ``allowed``:
    the menu indices a layer may take (default: all); ``pairs``: measured interaction terms
    (see :class:`Problem`) by table layer name."""
    if metric not in METRICS:
        raise ConfigError(f"unknown loss metric {metric!r}; use one of {', '.join(METRICS)}")
    if not table.has_metric(metric):
        raise ConfigError(
            f"the sensitivity table has no {metric!r} values for every entry; measure them "
            f"or choose another metric ({', '.join(m for m in METRICS if table.has_metric(m))})"
        )
    names = [x.name for x in table.layers]
    members = {m: x.name for x in table.layers for m in x.member_names}
    pinned = _resolve_pins(pins or {}, members, len(table.menu), table.labels)
    groups = _merge(_groups(table, names, fuse), ties, set(names))
    all_specs = tuple(range(len(table.menu)))
    units = []
    for group in groups:
        wanted = {pinned[n] for n in group if n in pinned}
        if len(wanted) > 1:
            raise ConfigError(
                f"pins give the fused layers {', '.join(group)} different specs; pin them alike "
                "or allocate with fusing off"
            )
        options = _options(group, all_specs, allowed or {}, table.labels)
        if wanted - set(options):
            label = table.labels[next(iter(wanted))]
            raise ConfigError(
                f"a pin gives {', '.join(group)} the spec {label!r}, which they may not take "
                f"here (allowed: {', '.join(table.labels[s] for s in options)})"
            )
        units.append(Unit(group, tuple(wanted) if wanted else options))
    bits = {k: e.bits for k, e in table.entries.items()}
    loss = {k: float(e.value(metric)) for k, e in table.entries.items()}  # type: ignore[arg-type]
    for name in names:
        for s in all_specs:
            table.entry(name, s)  # an incomplete table is an error here
    unit_pairs, extra = _fold_pairs(pairs or {}, tuple(units), len(table.menu))
    return Problem(
        tuple(units),
        bits,
        loss,
        sum(x.numel for x in table.layers),
        table.other_bytes,
        tuple(table.labels),
        unit_pairs,
        extra,
    )


def _merge(
    groups: list[tuple[str, ...]], ties: Sequence[Sequence[str]], known: set[str]
) -> list[tuple[str, ...]]:
    """``groups`` with every group that shares a layer with a tie merged into one (in table
    order); a tie naming a layer the table lacks is an error."""
    order = {n: k for k, g in enumerate(groups) for n in g}
    parent = list(range(len(groups)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for tie in ties:
        missing = [n for n in tie if n not in known]
        if missing:
            raise ConfigError(f"a tie names layers the table lacks: {', '.join(missing)}")
        first = root(order[tie[0]])
        for n in tie[1:]:
            parent[root(order[n])] = first
    merged: dict[int, list[str]] = {}
    for k, g in enumerate(groups):
        merged.setdefault(root(k), []).extend(g)
    return [tuple(g) for g in merged.values()]


def _options(
    group: tuple[str, ...],
    all_specs: tuple[int, ...],
    allowed: Mapping[str, Collection[int]],
    labels: list[str],
) -> tuple[int, ...]:
    options = tuple(s for s in all_specs if all(s in allowed.get(n, all_specs) for n in group))
    if not options:
        raise ConfigError(
            f"no spec of the menu ({', '.join(labels)}) is allowed for all of "
            f"{', '.join(group)}, which must share one; add a spec they can all take"
        )
    return options


def _fold_pairs(
    pairs: Mapping[PairKey, float], units: tuple[Unit, ...], n_specs: int
) -> tuple[dict[tuple[int, int, int, int], float], dict[tuple[str, int], float]]:
    """Layer-level pair terms as unit-level ones (i < j) and per-unit extras (same unit)."""
    unit = {n: i for i, u in enumerate(units) for n in u.layers}
    out: dict[tuple[int, int, int, int], float] = {}
    extra: dict[tuple[str, int], float] = {}
    for (a, s, b, t), delta in pairs.items():
        for name, spec in ((a, s), (b, t)):
            if name not in unit:
                raise ConfigError(f"a pair term names layer {name!r}, which the table lacks")
            if not 0 <= spec < n_specs:
                raise ConfigError(f"a pair term gives {name!r} spec {spec}, not in the menu")
        i, j = unit[a], unit[b]
        if i == j:
            if s == t:
                first = units[i].layers[0]
                extra[(first, s)] = extra.get((first, s), 0.0) + float(delta)
            continue  # one unit never takes two specs
        key = (i, s, j, t) if i < j else (j, t, i, s)
        out[key] = out.get(key, 0.0) + float(delta)
    return out, extra


def _groups(table: SensitivityTable, names: list[str], fuse: bool) -> list[tuple[str, ...]]:
    known = set(names)
    fused = [g for g in table.fused if set(g) <= known] if fuse else []
    member = {n for g in fused for n in g}
    singles = [(n,) for n in names if n not in member]
    return [tuple(g) for g in fused] + singles


def _resolve_pins(
    pins: dict[str, int], members: dict[str, str], n_specs: int, labels: list[str]
) -> dict[str, int]:
    """Menu index per pinned unit; ``members`` maps each linear (and each unit's name) to its
    unit."""
    units = {**members, **{u: u for u in members.values()}}
    out: dict[str, int] = {}
    for target, s in pins.items():
        if not 0 <= s < n_specs:
            raise ConfigError(
                f"pin {target!r}: spec index {s} is not in the menu (0..{n_specs - 1}: "
                f"{', '.join(labels)})"
            )
        if target in units:
            hits = [units[target]]
        elif target.startswith("re:"):
            try:
                pattern = re.compile(target[3:])
            except re.error as exc:
                raise ConfigError(f"bad regex in pin {target!r}: {exc}") from exc
            hits = list(dict.fromkeys(u for m, u in members.items() if pattern.fullmatch(m)))
            if not hits:
                raise ConfigError(f"pin {target!r} matches no layer of the table")
        else:
            close = difflib.get_close_matches(target, list(units), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"pin names unknown layer {target!r}{hint}")
        out.update({n: s for n in hits})
    return out


def spec_index(label_or_index: str, labels: tuple[str, ...] | list[str]) -> int:
    """A menu spec given by its index or its label (e.g. ``GPTQ W4 g64 sym``)."""
    text = label_or_index.strip()
    if text.isdigit():
        return int(text)
    if text in labels:
        return list(labels).index(text)
    close = difflib.get_close_matches(text, list(labels), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"{text!r} is not a spec of the menu ({', '.join(labels)}){hint}")
