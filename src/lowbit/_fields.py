"""Strict reading of configuration mappings (plan and menu files): an unknown key or a value of
the wrong type is an error naming the field's path (``rules[0].spec.format.symmetric``), and,
for a file, its line (:func:`line_of`). Nothing is coerced: ``symmetric: "no"`` is refused, not
read as true."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from lowbit.errors import ConfigError

Path_ = tuple[str | int, ...]


class FieldError(ConfigError):
    """A bad field of a configuration mapping; ``path`` leads to it from the top."""

    def __init__(self, path: Path_, problem: str) -> None:
        self.path = tuple(path)
        self.problem = problem
        super().__init__(f"{dotted(self.path)}: {problem}" if self.path else problem)


def dotted(path: Path_) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


@contextlib.contextmanager
def at(*keys: str | int) -> Iterator[None]:
    """Errors raised inside are about the field ``keys`` (prefixed to their path)."""
    try:
        yield
    except FieldError as exc:
        raise FieldError((*keys, *exc.path), exc.problem) from None
    except ConfigError as exc:
        raise FieldError(keys, str(exc)) from None


def mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError((), f"{what} must be a mapping of fields, got {_shown(value)}")
    return value


def check_keys(data: dict[str, Any], known: Iterable[str], what: str) -> None:
    """Refuse keys of ``data`` outside ``known``, suggesting the closest."""
    known = sorted(known)
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise FieldError(
                (str(key),), f"unknown field in {what}; {hint}known: {', '.join(known)}"
            )


def require(data: dict[str, Any], key: str, what: str) -> Any:
    if key not in data:
        raise FieldError((key,), f"missing: {what} needs the field {key!r}")
    return data[key]


def typed_kwargs(cls: type, data: dict[str, Any], what: str, skip: tuple[str, ...] = ()) -> dict:
    """The fields of dataclass ``cls`` in ``data``, each checked against its annotation; unknown
    keys (outside ``skip``) and missing required fields are refused."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys({k: v for k, v in data.items() if k not in skip}, fields, what)
    hints = _hints(cls)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise FieldError((name,), f"missing: {what} needs the field {name!r}")
    out = {}
    for key, value in data.items():
        if key in skip:
            continue
        if key in hints:
            check_type(value, hints[key], key)
        out[key] = value
    return out


def check_type(value: Any, hint: Any, key: str | int) -> None:
    """Refuse ``value`` unless it has the type ``hint`` (bool, int, float, str, an Enum, an
    optional or a union of those; other annotations are left to the constructor)."""
    problem = _mismatch(value, hint)
    if problem is not None:
        raise FieldError((key,), f"{problem}, got {_shown(value)}")


def _mismatch(value: Any, hint: Any) -> str | None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        problems = [_mismatch(value, h) for h in options]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if hint is type(None):
        return None if value is None else "must be null"
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        if isinstance(value, hint) or value in values:
            return None
        return f"must be one of {', '.join(repr(v) for v in values)}"
    return None


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation this module cannot resolve: leave it to the constructor
        return {}


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def line_of(text: str, path: Path_) -> int | None:
    """The 1-based line of the field at ``path`` in a YAML or JSON ``text`` (JSON is read as
    YAML, whose flow style it is); None when the text cannot be composed or the path is absent."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            pairs = [(k, v) for k, v in node.value if k.value == key]
            if not pairs:
                break
            line, node = pairs[0][0].start_mark.line + 1, pairs[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def read_file(path: Any, what: str) -> tuple[Any, str]:
    """(the data, the text) of a YAML (.yaml/.yml) or JSON file; ArtefactErrors name the file."""
    import json
    from pathlib import Path

    import yaml

    from lowbit.errors import ArtefactError

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{what} {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text), text
        return json.loads(text), text
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ArtefactError(
            f"{what} {path} is not valid JSON/YAML: {exc}; fix the syntax at the place named"
        ) from exc


def located(path: Any, text: str, exc: FieldError, what: str) -> ConfigError:
    """``exc`` as a ConfigError naming the file and, where it can be found, the line."""
    line = line_of(text, exc.path)
    where = f"{what} {path}" + (f", line {line}" if line else "")
    return ConfigError(f"{where}: {exc}")
