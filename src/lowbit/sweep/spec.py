"""The sweep file: a typed, validated grid of quantize-and-evaluate trials.

    models: [smollm2-135m]
    algorithms: [rtn]                 # with formats × group_sizes, or
    formats: [int4, int3, {format: int, bits: 4, symmetric: false}, nf4]
    group_sizes: [32, 64, 128]
    plans: [mixed.yaml]               # plan files (instead of, or beside, the grid above)
    budgets: [3.5, 4.0]               # average bits, allocated from `table`
    table: sens.json
    texts: [{source: builtin:python-docs, ctx: 512, windows: 40}]
    tasks: [arc_easy, {tasks: [piqa, my_task.yaml], limit: 100, include_paths: [my_tasks]}]
    calibration: {source: builtin:python-docs, ctx: 512, windows: 128, seed: 0}
    runtime: {device: auto, dtype: auto}

The grid is models × (algorithms × formats × group_sizes + plans + budgets) × texts × tasks
(each item of ``tasks`` a task set evaluated through the harness, reference cached; none by
default); each
trial's configuration is plain JSON (the full plan included), hashed for the store. Unknown
fields and empty grids are refused naming the field.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError

_INT = re.compile(r"^int(\d+)(-asym)?$")


@dataclass(frozen=True)
class FormatChoice:
    """A weight format of the grid: a registered name, its bits (int, lut) and symmetry."""

    format: str = "int"
    bits: int = 4
    symmetric: bool = True

    @classmethod
    def parse(cls, item: Any, where: str) -> FormatChoice:
        """``int4``, ``int3-asym``, a registered name (``nf4``, ``mxfp4``…) or a mapping."""
        if isinstance(item, str):
            m = _INT.match(item)
            return cls("int", int(m[1]), m[2] is None) if m else cls(item)
        return _typed(cls, item, where)

    @property
    def label(self) -> str:
        if self.format in ("int", "lut"):
            return f"{self.format}{self.bits}{'' if self.symmetric else '-asym'}"
        return self.format


@dataclass(frozen=True)
class TextChoice:
    source: str = "builtin:python-docs"
    ctx: int = 512
    windows: int = 40
    seed: int = 0
    bos: str = "auto"


@dataclass(frozen=True)
class TaskChoice:
    """A task set of the grid: the harness's task names (or YAML files), the first ``limit``
    items of each, and where tasks of one's own are (resolved beside the sweep file)."""

    tasks: tuple[str, ...] = ()
    limit: int | None = None
    batch_size: int = 16
    max_gen_toks: int | None = None
    include_paths: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return "tasks " + ",".join(self.tasks) + (f" limit {self.limit}" if self.limit else "")


_TASK_INTS = ("limit", "batch_size", "max_gen_toks")


def _task(item: Any, where: str, base: Path | None) -> TaskChoice:
    """``arc_easy``, ``"arc_easy,piqa"``, or a mapping of :class:`TaskChoice` fields."""
    if isinstance(item, str):
        item = {"tasks": item}
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a task name or a mapping with tasks, got {item!r}")
    _known(item, {f.name for f in fields(TaskChoice)}, where)
    names = item.get("tasks")
    names = names.split(",") if isinstance(names, str) else names
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n.strip() for n in names)
    ):
        raise ConfigError(f"{where}.tasks: expected task names (a list or A,B), got {names!r}")
    for key in _TASK_INTS:
        v = item.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{where}.{key}: expected a positive integer, got {v!r}")
    paths = item.get("include_paths", [])
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        raise ConfigError(f"{where}.include_paths: expected a list of folders, got {paths!r}")
    here = base.parent if base is not None else Path.cwd()
    return TaskChoice(
        tasks=tuple(_beside(here, n.strip()) for n in names),
        include_paths=tuple(str((here / x).resolve()) for x in paths),
        **{k: item[k] for k in _TASK_INTS if k in item},
    )


def _beside(here: Path, name: str) -> str:
    """A task YAML file named relative to the sweep file, made absolute; a task name as is."""
    return str((here / name).resolve()) if name.endswith((".yaml", ".yml")) else name


@dataclass(frozen=True)
class RuntimeChoice:
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 0  # torch's CPU threads per trial; 0: the driver's count (issue 17)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(
                f"runtime.threads: {self.threads} is negative; give a thread count per trial, "
                "or 0 for the driver's"
            )


@dataclass(frozen=True)
class SweepSpec:
    models: tuple[str, ...]
    algorithms: tuple[str, ...] = ("rtn",)
    formats: tuple[FormatChoice, ...] = ()
    group_sizes: tuple[int, ...] = (128,)
    plans: tuple[str, ...] = ()
    budgets: tuple[float, ...] = ()
    table: str | None = None
    texts: tuple[TextChoice, ...] = (TextChoice(),)
    tasks: tuple[TaskChoice, ...] = ()
    calibration: TextChoice = field(default_factory=lambda: TextChoice(windows=128))
    runtime: RuntimeChoice = RuntimeChoice()
    path: Path | None = None  # where it was read from (relative plan/table paths resolve here)


def _typed(cls: type, data: Any, where: str) -> Any:
    """``cls(**data)`` with unknown fields and wrong types refused by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    _known(data, {f.name for f in fields(cls)}, where)
    for key, value in data.items():
        want = type(getattr(cls(), key)) if key != "windows" else int
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{key}: expected {want.__name__}, got {value!r}")
    return cls(**data)


def _known(data: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )


_LISTS = {"models": str, "algorithms": str, "group_sizes": int, "plans": str, "budgets": float}


def parse_sweep(data: Any, path: Path | None = None) -> SweepSpec:
    """A validated :class:`SweepSpec` from the parsed YAML ``data`` of ``path``."""
    where = str(path or "sweep")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a sweep file is a mapping of fields (models, formats, …)")
    _known(data, {f.name for f in fields(SweepSpec)} - {"path"}, where)
    kw: dict[str, Any] = {"path": path}
    for key, kind in _LISTS.items():
        if key in data:
            kw[key] = tuple(_items(data[key], kind, f"{where}: {key}"))
    if "formats" in data:
        items = _items(data["formats"], object, f"{where}: formats")
        kw["formats"] = tuple(
            FormatChoice.parse(x, f"{where}: formats[{i}]") for i, x in enumerate(items)
        )
    if "texts" in data:
        items = _items(data["texts"], object, f"{where}: texts")
        kw["texts"] = tuple(_text(x, f"{where}: texts[{i}]") for i, x in enumerate(items))
    if "tasks" in data:
        items = _items(data["tasks"], object, f"{where}: tasks")
        kw["tasks"] = tuple(_task(x, f"{where}: tasks[{i}]", path) for i, x in enumerate(items))
    if "calibration" in data:
        kw["calibration"] = _text(data["calibration"], f"{where}: calibration")
    if "runtime" in data:
        kw["runtime"] = _typed(RuntimeChoice, data["runtime"], f"{where}: runtime")
    if "table" in data:
        kw["table"] = str(data["table"])
    spec = SweepSpec(**kw)
    _check_grid(spec, where)
    return spec


def _text(item: Any, where: str) -> TextChoice:
    return TextChoice(source=item) if isinstance(item, str) else _typed(TextChoice, item, where)


def _items(value: Any, kind: type, where: str) -> list[Any]:
    if not isinstance(value, list):
        value = [value]
    for v in value:
        ok = (
            isinstance(v, int | float) and not isinstance(v, bool)
            if kind is float
            else (isinstance(v, kind) and not (kind is int and isinstance(v, bool)))
        )
        if not ok:
            raise ConfigError(f"{where}: expected {kind.__name__} items, got {v!r}")
    return [float(v) for v in value] if kind is float else list(value)


def _check_grid(spec: SweepSpec, where: str) -> None:
    if not spec.models:
        raise ConfigError(f"{where}: models is empty; name at least one model")
    if not spec.texts:
        raise ConfigError(f"{where}: texts is empty; give at least one evaluation text")
    grid = spec.formats and spec.algorithms and spec.group_sizes
    if not (grid or spec.plans or spec.budgets):
        raise ConfigError(
            f"{where}: the grid is empty: give formats (with algorithms and group_sizes), plans "
            "or budgets"
        )
    if spec.budgets and spec.table is None:
        raise ConfigError(f"{where}: budgets need a sensitivity table; add table: PATH")


def load_sweep(path: Path) -> SweepSpec:
    """Read and validate a sweep file (YAML)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_sweep(data, path)


def text_dict(t: TextChoice) -> dict[str, Any]:
    return asdict(t)


def task_dict(t: TaskChoice) -> dict[str, Any]:
    return {**asdict(t), "tasks": list(t.tasks), "include_paths": list(t.include_paths)}
