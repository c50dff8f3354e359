"""The sensitivity table: for every unit (a linear layer, or the experts' projection of one block
that serving engines run with one scheme) and every spec of a menu, what quantizing only that
unit costs (measured KL divergence, Hessian- and Fisher-weighted proxies) and its stored
bits. Pure data: JSON round trip (versioned), CSV export, aggregation and rank correlation.
No torch here, so the allocation solvers can read a table without loading a model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lowbit.errors import ArtefactError, ConfigError
from lowbit.plan import LayerSpec

TABLE_VERSION = 1
METRICS = ("kl", "hessian", "fisher")


@dataclass(frozen=True)
class LayerInfo:
    """One unit of the table: a quantizable linear layer (``module`` is its name inside block
    ``block``), or layers that always share one spec (``members``: full names, each
    ``out_features`` × ``in_features``), e.g. one projection of every expert of a block; then
    ``name`` is the ``re:`` plan rule that matches exactly the members and ``module`` its
    readable form (``mlp.experts.*.gate_proj``)."""

    name: str
    block: int
    module: str
    out_features: int
    in_features: int
    members: tuple[str, ...] = ()

    @property
    def member_names(self) -> tuple[str, ...]:
        """The linear layers this unit quantizes (full names)."""
        return self.members or (self.name,)

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features * len(self.member_names)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.members:
            del out["members"]  # a single layer's record is as it always was
        else:
            out["members"] = list(self.members)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerInfo:
        return cls(**{**data, "members": tuple(data.get("members", ()))})


@dataclass(frozen=True)
class Entry:
    """Unit ``layer`` (every member at once) quantized alone with menu spec ``spec`` (an
    index): its stored ``bits`` (codes, scales, zero points, permutation); ``kl``: mean
    per-token KL divergence of the model to the original (None if not measured); ``hessian``:
    Σ_j E[x_j²]·Σ_i ΔW_ij²; ``fisher``: ½·Σ F_ij·ΔW_ij² (None if not computed), both summed
    over the members; ``seconds`` spent on this entry."""

    layer: str
    spec: int
    bits: int
    kl: float | None
    hessian: float
    fisher: float | None
    seconds: float = 0.0

    def value(self, metric: str) -> float | None:
        return {"kl": self.kl, "hessian": self.hessian, "fisher": self.fisher}[metric]


def menu_labels(menu: Iterable[LayerSpec]) -> list[str]:
    return [spec.describe() for spec in menu]


def check_menu(menu: tuple[LayerSpec, ...]) -> None:
    if not menu:
        raise ConfigError("the menu of specs is empty; give at least one (e.g. --bits 4)")
    labels = menu_labels(menu)
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"the menu lists {', '.join(dupes)} more than once")


@dataclass
class SensitivityTable:
    model: dict[str, Any]
    menu: tuple[LayerSpec, ...]
    layers: tuple[LayerInfo, ...]
    entries: dict[tuple[str, int], Entry]
    fused: tuple[tuple[str, ...], ...] = ()
    value_and_down: tuple[str, ...] = ()
    n_blocks: int = 0
    other_bytes: int = 0
    probe: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return menu_labels(self.menu)

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise ConfigError(f"layer {name!r} is not in the sensitivity table")

    def entry(self, layer: str, spec: int) -> Entry:
        try:
            return self.entries[(layer, spec)]
        except KeyError:
            raise ArtefactError(
                f"the sensitivity table has no entry for {layer} with {self.labels[spec]}; "
                "it is incomplete (resume the sensitivity run)"
            ) from None

    def is_complete(self) -> bool:
        return all((i.name, s) in self.entries for i in self.layers for s in range(len(self.menu)))

    def has_metric(self, metric: str) -> bool:
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        return bool(self.entries) and all(
            e.value(metric) is not None for e in self.entries.values()
        )

    def check_model(self, fingerprint: str, source: str) -> None:
        if self.model.get("fingerprint") != fingerprint:
            raise ArtefactError(
                f"the sensitivity table was measured on {self.model.get('source')} (fingerprint "
                f"{self.model.get('fingerprint')}), not on {source} ({fingerprint}); measure "
                "this model with lowbit sensitivity"
            )

    def aggregate(self, metric: str, by: str) -> dict[str, list[float]]:
        """Sum of ``metric`` per block (``by="block"``) or per module type (``"module"``), one
        value per menu spec."""
        if by not in ("block", "module"):
            raise ConfigError(f"aggregate by 'block' or 'module', not {by!r}")
        out: dict[str, list[float]] = {}
        for info in self.layers:
            key = str(info.block) if by == "block" else info.module
            row = out.setdefault(key, [0.0] * len(self.menu))
            for s in range(len(self.menu)):
                row[s] += self.entry(info.name, s).value(metric) or 0.0
        return out

    def rank_correlation(self, proxy: str, against: str = "kl") -> dict[str, float]:
        """Spearman rank correlation of ``proxy`` with ``against`` over all entries and per
        spec (NaN where a value is missing or constant)."""
        from scipy.stats import spearmanr

        def rho(entries: list[Entry]) -> float:
            pairs = [(e.value(proxy), e.value(against)) for e in entries]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if len(pairs) < 3:
                return math.nan
            res = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
            return float(res.statistic)

        values = list(self.entries.values())
        out = {"all": rho(values)}
        for s, label in enumerate(self.labels):
            out[label] = rho([e for e in values if e.spec == s])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "lowbit_sensitivity_version": TABLE_VERSION,
            "model": self.model,
            "menu": [spec.to_dict() | {"label": spec.describe()} for spec in self.menu],
            "layers": [info.to_dict() for info in self.layers],
            "fused": [list(g) for g in self.fused],
            "value_and_down": list(self.value_and_down),
            "n_blocks": self.n_blocks,
            "other_bytes": self.other_bytes,
            "probe": self.probe,
            "timings_s": self.timings,
            "entries": [asdict(e) for e in self.entries.values()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sensitivity table") -> SensitivityTable:
        version = data.get("lowbit_sensitivity_version")
        if version != TABLE_VERSION:
            raise ArtefactError(
                f"{where}: version {version!r} is not supported (this lowbit reads {TABLE_VERSION})"
            )
        try:
            menu = tuple(
                LayerSpec.from_dict({k: v for k, v in d.items() if k != "label"})
                for d in data["menu"]
            )
            entries = [Entry(**e) for e in data["entries"]]
            return cls(
                model=data["model"],
                menu=menu,
                layers=tuple(LayerInfo.from_dict(d) for d in data["layers"]),
                entries={(e.layer, e.spec): e for e in entries},
                fused=tuple(tuple(g) for g in data.get("fused", [])),
                value_and_down=tuple(data.get("value_and_down", [])),
                n_blocks=int(data.get("n_blocks", 0)),
                other_bytes=int(data.get("other_bytes", 0)),
                probe=data.get("probe", {}),
                timings=data.get("timings_s", {}),
            )
        except (KeyError, TypeError) as exc:
            raise ArtefactError(f"{where} is malformed: missing or bad field {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> SensitivityTable:
        path = Path(path)
        if not path.is_file():
            raise ArtefactError(f"sensitivity table {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtefactError(f"sensitivity table {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtefactError(f"sensitivity table {path} must hold a JSON object")
        return cls.from_dict(data, where=str(path))

    def digest(self) -> str:
        """SHA-256 of the table's canonical JSON: which table a plan or sweep came from."""
        import hashlib

        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(
            ["layer", "block", "module", "spec", "bits_per_weight", "kl", "hessian", "fisher"]
        )
        labels = self.labels
        for info in self.layers:
            for s in range(len(self.menu)):
                e = self.entries.get((info.name, s))
                if e is None:
                    continue
                writer.writerow(
                    [
                        info.name,
                        info.block,
                        info.module,
                        labels[s],
                        f"{e.bits / info.numel:.6f}",
                        "" if e.kl is None else f"{e.kl:.8g}",
                        f"{e.hessian:.8g}",
                        "" if e.fisher is None else f"{e.fisher:.8g}",
                    ]
                )
        return buf.getvalue()


def merge_tables(a: SensitivityTable, b: SensitivityTable) -> SensitivityTable:
    """One table with the specs of both (measured on the same model, layers and probe data);
    ``b``'s specs already in ``a`` are dropped."""
    if a.model.get("fingerprint") != b.model.get("fingerprint"):
        raise ArtefactError("the two sensitivity tables were measured on different models")
    if a.layers != b.layers or a.probe != b.probe:
        raise ArtefactError(
            "the two sensitivity tables differ in layers or probe data; measure them alike"
        )
    labels = a.labels
    menu = list(a.menu)
    entries = dict(a.entries)
    for s, spec in enumerate(b.menu):
        if spec.describe() in labels:
            continue
        menu.append(spec)
        new = len(menu) - 1
        for (layer, t), e in b.entries.items():
            if t == s:
                entries[(layer, new)] = Entry(
                    e.layer, new, e.bits, e.kl, e.hessian, e.fisher, e.seconds
                )
    timings = {k: a.timings.get(k, 0.0) + b.timings.get(k, 0.0) for k in a.timings | b.timings}
    return SensitivityTable(
        a.model,
        tuple(menu),
        a.layers,
        entries,
        a.fused,
        a.value_and_down,
        a.n_blocks,
        a.other_bytes,
        a.probe,
        timings,
    )
