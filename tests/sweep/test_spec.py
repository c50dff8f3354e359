"""The sweep file: typed fields, the grid it expands to, bad input refused by name."""

from __future__ import annotations

import pytest

from lowbit.errors import ConfigError
from lowbit.sweep.grid import expand
from lowbit.sweep.spec import FormatChoice, load_sweep, parse_sweep
from lowbit.sweep.store import config_hash


def test_grid_is_models_by_plans_by_texts(tiny_llama):
    spec = parse_sweep({
        "models": [str(tiny_llama)], "algorithms": ["rtn", "gptq"], "formats": ["int4", "nf4"],
        "group_sizes": [32, 64], "texts": ["builtin:python-docs", {"source": "x.txt", "ctx": 64}],
    })  # fmt: skip
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 2 * 2
    hashes = {config_hash(c) for _, c in trials}
    assert len(hashes) == len(trials)  # every cell is a different configuration
    gptq = [c for n, c in trials if "gptq" in n]
    assert all(c["calibration"] is not None for c in gptq)
    assert all(c["calibration"] is None for n, c in trials if "rtn" in n)
    assert trials[0][1]["plan"]["default"]["format"] == {
        "type": "int", "bits": 4, "symmetric": True, "scale_dtype": "float16",
        "scale_rule": "extreme",
    }  # fmt: skip
    assert expand(spec) == trials  # deterministic


def test_format_names():
    assert FormatChoice.parse("int3-asym", "f") == FormatChoice("int", 3, False)
    assert FormatChoice.parse("mxfp4", "f").format == "mxfp4"
    assert FormatChoice.parse({"format": "int", "bits": 2}, "f").bits == 2


M = {"models": ["m"]}
F = {**M, "formats": ["int4"]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**F, "colour": 1}, "unknown field 'colour'"),
        ({**F, "texts": [{"src": "a"}]}, r"texts\[0\]: unknown field 'src'"),
        ({**M, "formats": [{"format": "int", "bits": "4"}]}, r"formats\[0\].bits: expected int"),
        ({**M, "formats": []}, "the grid is empty"),
        ({"models": [], "formats": ["int4"]}, "models is empty"),
        ({**F, "group_sizes": [True]}, "group_sizes: expected int"),
        ({**M, "budgets": [4.0]}, "budgets need a sensitivity table"),
        ({**F, "runtime": {"threads": -1}}, "runtime.threads: -1 is negative"),
        ({**F, "runtime": {"threads": "2"}}, "runtime.threads: expected int"),
        (["models"], "a mapping of fields"),
    ],
)
def test_bad_sweep_files_are_refused_by_field(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_sweep(data)


def test_bad_cells_and_files_are_named(tmp_path, tiny_llama):
    spec = parse_sweep({"models": [str(tiny_llama)], "formats": ["nosuchfmt"]})
    with pytest.raises(ConfigError, match="sweep cell rtn nosuchfmt g128"):
        expand(spec)
    bad = tmp_path / "s.yaml"
    bad.write_text("models: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "none.yaml")
