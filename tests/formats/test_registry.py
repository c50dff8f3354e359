"""The format registry: every name builds its format, unknown names get suggestions, and
every format value round-trips through its dict."""

from __future__ import annotations

import pytest

from lowbit._fields import FieldError
from lowbit.errors import ConfigError, UnknownNameError
from lowbit.formats import (
    FORMATS,
    FloatFormat,
    GGMLFormat,
    IntFormat,
    LUTFormat,
    MXFormat,
    NF4Format,
    NVFP4Format,
    format_from_dict,
    format_to_dict,
)

NAMES = {
    "fp8_e4m3": FloatFormat(4, 3),
    "fp8_e5m2": FloatFormat(5, 2),
    "fp6_e3m2": FloatFormat(3, 2),
    "fp6_e2m3": FloatFormat(2, 3),
    "fp4_e2m1": FloatFormat(2, 1),
    "nf4": NF4Format(),
    "mxfp8": MXFormat("fp8_e4m3"),
    "mxfp8_e5m2": MXFormat("fp8_e5m2"),
    "mxfp6": MXFormat("fp6_e2m3"),
    "mxfp6_e3m2": MXFormat("fp6_e3m2"),
    "mxfp4": MXFormat("fp4_e2m1"),
    "mxint8": MXFormat("int8"),
    "nvfp4": NVFP4Format(),
    **{k: GGMLFormat(k) for k in ("q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "q8_0")},
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_names_build_their_format(name):
    fmt = FORMATS.get(name)()
    assert fmt == NAMES[name]
    assert fmt.name == name


def test_parametrized_names():
    assert FORMATS.get("int")(4, False) == IntFormat(4, False)
    assert FORMATS.get("lut")(3) == LUTFormat(3)
    assert FORMATS.get("fp8_e4m3")("bfloat16") == FloatFormat(4, 3, "bfloat16")
    assert set(FORMATS.names()) == {*NAMES, "int", "lut"}


def test_every_entry_has_a_one_line_description():
    for name, make in FORMATS:
        assert make.__doc__ and make.__doc__.strip(), name


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("mxfp5", "'mxfp4'"), ("nf3", "'nf4'"), ("fp8_e4m2", "'fp8_e4m3'"), ("nvfp8", "'nvfp4'")],
)
def test_unknown_name_suggests(name, suggestion):
    with pytest.raises(
        UnknownNameError, match=f"unknown format '{name}'; did you mean.*{suggestion}"
    ):
        FORMATS.get(name)


FORMAT_VALUES = [
    IntFormat(4),
    IntFormat(3, False, "bfloat16"),
    *NAMES.values(),
    FloatFormat(4, 3, "float32"),
    NF4Format("bfloat16"),
    LUTFormat(3, "float32", 7),
]


@pytest.mark.parametrize("fmt", FORMAT_VALUES, ids=lambda f: f.name)
def test_dict_round_trip(fmt):
    data = format_to_dict(fmt)
    assert format_from_dict(data) == fmt
    assert set(data) >= {"type"}


def test_int_dict_is_unchanged():
    assert format_to_dict(IntFormat(4, False)) == {
        "type": "int",
        "bits": 4,
        "symmetric": False,
        "scale_dtype": "float16",
        "scale_rule": "extreme",
    }
    assert format_from_dict({"bits": 3}) == IntFormat(3)  # plans before typed formats


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"type": "fp", "bits": 4}, FieldError, "type: unknown format type 'fp'"),
        ({"type": "mx", "element": "fp9"}, ConfigError, "no MX element 'fp9'"),
        ({"type": "float", "exponent_bits": 4}, FieldError, "mantissa_bits: missing"),
        ({"type": "nf4", "bits": 4}, FieldError, "bits: unknown field in a nf4 format"),
    ],
)
def test_bad_dicts(data, error, message):
    with pytest.raises(error, match=message):
        format_from_dict(data)
