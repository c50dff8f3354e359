"""The format registry (names → constructors, for ``lowbit ls formats`` and configs) and the
typed dict round trip of format values used by plans and saved models."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lowbit._fields import FieldError, at, check_keys, mapping, typed_kwargs
from lowbit._registry import Registry
from lowbit.errors import ConfigError
from lowbit.formats.codebook import LUTFormat, NF4Format
from lowbit.formats.floating import FloatFormat
from lowbit.formats.ggml import KINDS, GGMLFormat
from lowbit.formats.granularity import Granularity, PerChannel, PerGroup, PerTensor
from lowbit.formats.integer import IntFormat
from lowbit.formats.microscaling import MXFormat
from lowbit.formats.nvfp4 import NVFP4Format
from lowbit.formats.tensor import WeightFormat

FORMATS: Registry[Callable[..., Any]] = Registry("format")
# the "type" field of a serialized format → its class (field names = dataclass fields)
FORMAT_TYPES: Registry[type] = Registry("format type")
for _tag, _cls in [
    ("int", IntFormat),
    ("float", FloatFormat),
    ("nf4", NF4Format),
    ("lut", LUTFormat),
    ("mx", MXFormat),
    ("nvfp4", NVFP4Format),
    ("ggml", GGMLFormat),
]:
    FORMAT_TYPES.register(_tag, _cls)


def _float(e: int, m: int, doc: str) -> Callable[..., FloatFormat]:
    def make(scale_dtype: str = "float16") -> FloatFormat:
        return FloatFormat(e, m, scale_dtype)

    make.__doc__ = doc
    return make


def _mx(element: str, doc: str) -> Callable[[], MXFormat]:
    def make() -> MXFormat:
        return MXFormat(element)

    make.__doc__ = doc
    return make


FORMATS.register("int", IntFormat)
FORMATS.register("fp8_e4m3", _float(4, 3, "FP8 E4M3 (OCP, float8_e4m3fn): max 448, no inf"))
FORMATS.register("fp8_e5m2", _float(5, 2, "FP8 E5M2 (OCP, IEEE-like): max 57344"))
FORMATS.register("fp6_e3m2", _float(3, 2, "FP6 E3M2 (OCP MX): max 28"))
FORMATS.register("fp6_e2m3", _float(2, 3, "FP6 E2M3 (OCP MX): max 7.5"))
FORMATS.register("fp4_e2m1", _float(2, 1, "FP4 E2M1 (OCP MX): 0, 0.5, 1, 1.5, 2, 3, 4, 6"))
FORMATS.register("nf4", NF4Format)
FORMATS.register("lut", LUTFormat)
FORMATS.register("mxfp8", _mx("fp8_e4m3", "MXFP8: FP8 E4M3 in blocks of 32, E8M0 scale"))
FORMATS.register("mxfp8_e5m2", _mx("fp8_e5m2", "MXFP8 E5M2: blocks of 32, E8M0 scale"))
FORMATS.register("mxfp6", _mx("fp6_e2m3", "MXFP6: FP6 E2M3 in blocks of 32, E8M0 scale"))
FORMATS.register("mxfp6_e3m2", _mx("fp6_e3m2", "MXFP6 E3M2: blocks of 32, E8M0 scale"))
FORMATS.register("mxfp4", _mx("fp4_e2m1", "MXFP4: FP4 E2M1 in blocks of 32, E8M0 scale"))
FORMATS.register("mxint8", _mx("int8", "MXINT8: INT8 (k/64) in blocks of 32, E8M0 scale"))
FORMATS.register("nvfp4", NVFP4Format)


def _ggml(kind: str) -> Callable[[], GGMLFormat]:
    def make() -> GGMLFormat:
        return GGMLFormat(kind)

    spec = KINDS[kind]
    make.__doc__ = (
        f"GGML {kind.upper()}: {spec.bits}-bit codes in blocks of {spec.block} "
        f"({spec.bits + spec.header * 8 / spec.block:g} bits per weight"
        + (
            f"; rows not a multiple of 256 fall back to {spec.fallback.upper()})"
            if spec.fallback
            else ")"
        )
    )
    return make


for _kind in KINDS:
    FORMATS.register(_kind, _ggml(_kind))


def format_to_dict(fmt: WeightFormat) -> dict[str, Any]:
    """``{"type": <tag>, **fields}``; IntFormat gives {"type": "int", "bits", "symmetric",
    "scale_dtype"} as plans always have."""
    for tag, cls in FORMAT_TYPES:
        if type(fmt) is cls:
            return {"type": tag, **dataclasses.asdict(fmt)}  # type: ignore[call-overload]
    raise ConfigError(f"format {fmt!r} has no registered type")


def format_from_dict(data: dict[str, Any]) -> WeightFormat:
    """Inverse of :func:`format_to_dict`; a missing type means "int" (plans before issue 3).
    Unknown fields, missing required ones and values of the wrong type are FieldErrors."""
    data = mapping(data, "a format")
    with at("type"):
        cls = FORMAT_TYPES.get(str(data.get("type", "int")))
    return cls(**typed_kwargs(cls, data, f"a {data.get('type', 'int')} format", skip=("type",)))


_GRANULARITY_TAGS: dict[type, str] = {PerGroup: "group", PerChannel: "channel", PerTensor: "tensor"}


def granularity_to_dict(g: Granularity) -> dict[str, Any]:
    """``{"type": tag, **fields}``: a group's size, nothing more for a channel or a tensor."""
    return {"type": _GRANULARITY_TAGS[type(g)], **dataclasses.asdict(g)}  # type: ignore[call-overload]


def granularity_from_dict(d: Any) -> Granularity:
    d = mapping(d, "a granularity")
    kind = d.get("type")
    if kind == "group":
        check_keys(d, ("type", "size"), "a group granularity")
        return PerGroup(**typed_kwargs(PerGroup, d, "a group granularity", skip=("type",)))
    if kind in ("channel", "tensor"):
        check_keys(d, ("type",), f"a {kind} granularity")
        return PerChannel() if kind == "channel" else PerTensor()
    raise FieldError(("type",), f"unknown granularity {kind!r}; use 'group', 'channel' or 'tensor'")
