"""Menus of formats: typed specs with the formats' honest stored bits, the integer menu as the
command-line options always built it, unknown names refused with suggestions."""

from __future__ import annotations

import pytest

from lowbit import api
from lowbit.algorithms import RTNConfig
from lowbit.allocation.menu import FULL, MenuConfig, build_menu
from lowbit.errors import ConfigError, UnknownNameError
from lowbit.formats import FloatFormat, IntFormat, MXFormat, NF4Format, NVFP4Format

OUT, IN = 576, 1536  # a SmolLM2-135M q_proj


def honest(spec) -> float:
    """Bits per weight written out by hand from each format's layout (independent of
    ``bits_per_weight``): codes + block/group scales + a tensor scale."""
    fmt, n = spec.fmt, OUT * IN
    group = getattr(spec.granularity, "size", IN)
    table = {
        IntFormat: lambda: fmt.bits + 16 / group,  # symmetric: an fp16 scale per group
        NF4Format: lambda: 4 + 16 / group,  # 4-bit index, fp16 absmax per group
        MXFormat: lambda: 4 + 8 / 32,  # FP4 E2M1, an E8M0 exponent per 32
        NVFP4Format: lambda: 4 + 8 / 16 + 32 / n,  # FP4, FP8 E4M3 per 16, one fp32 per tensor
        FloatFormat: lambda: 8 + 16 / IN,  # FP8 E4M3, an fp16 scale per output row
    }
    return table[type(fmt)]()


def test_the_full_menu_lists_issue_16_formats_at_honest_bits():
    menu = build_menu(*FULL)
    labels = [s.describe() for s in menu]
    assert len(menu) == 16 and len(set(labels)) == 16
    assert {"GPTQ NF4 g64", "GPTQ NVFP4 g16", "GPTQ MXFP4 g32", "GPTQ FP8_E4M3 per-channel"} <= set(
        labels
    )
    for bits in (2, 3, 4, 8):
        for g in (32, 64, 128):
            assert f"GPTQ W{bits} g{g} sym" in labels
    for spec in menu:
        assert spec.bits_per_weight(OUT, IN) == pytest.approx(honest(spec), rel=1e-12), spec


@pytest.mark.parametrize("algorithm", ["gptq", "rtn"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_the_integer_menu_is_the_one_the_options_built(algorithm, symmetric):
    old = tuple(
        api.spec_from_options(b, g, symmetric, algorithm) for b in (2, 3, 4, 8) for g in (32, 64)
    )
    assert build_menu(MenuConfig(("int",), (2, 3, 4, 8), (32, 64), algorithm, symmetric)) == old


def test_format_and_algorithm_names_are_case_insensitive():
    """As the registries read them (``--format INT`` used to end in a TypeError)."""
    upper = api.spec_from_options(3, 64, True, "GPTQ", damp=0.05, fmt="INT")
    assert upper == api.spec_from_options(3, 64, True, "gptq", damp=0.05, fmt="int")


def test_each_format_takes_the_options_it_uses():
    menu = build_menu(MenuConfig(("nf4", "nvfp4", "int"), (3,), (64, 128), "rtn"))
    assert [s.describe() for s in menu] == [
        "RTN NF4 g64", "RTN NF4 g128", "RTN NVFP4 g16", "RTN W3 g64 sym", "RTN W3 g128 sym"
    ]  # fmt: skip


def test_bad_menus_are_refused_with_the_name():
    with pytest.raises(UnknownNameError, match="did you mean 'nvfp4'"):
        MenuConfig(("nvfp",))
    with pytest.raises(ConfigError, match="at least one format"):
        MenuConfig(())
    with pytest.raises(ConfigError, match="positive"):
        MenuConfig(("int",), (4,), (0,))
    with pytest.raises(UnknownNameError, match="algorithm"):
        build_menu(MenuConfig(("int",), (4,), (64,), "gtpq"))


def test_command_line_menus(tmp_path):
    from lowbit.cli.menu import menu_specs

    full = menu_specs([4], [64], "rtn", True, None, ["full"])
    assert len(full) == 16 and all(s.algorithm == RTNConfig() for s in full)
    assert menu_specs([2, 4], [32], "gptq", True, None, None) == build_menu(
        MenuConfig(("int",), (2, 4), (32,))
    )
    menu = tmp_path / "menu.yaml"
    menu.write_text("- format: {type: nf4}\n  granularity: {type: group, size: 64}\n")
    assert [s.describe() for s in menu_specs([4], [64], "gptq", True, menu, None)] == [
        "GPTQ NF4 g64"
    ]
    with pytest.raises(ConfigError, match="not both"):
        menu_specs([4], [64], "gptq", True, menu, ["nf4"])


def test_the_gguf_menu_is_what_gguf_export_writes_at_its_block_bytes():
    from lowbit.allocation.menu import PRESETS

    menu = build_menu(*PRESETS.get("gguf"))
    labels = [s.describe() for s in menu]
    assert labels == [
        "GPTQ W4 g32 sym",
        "GPTQ W8 g32 sym",
        "GPTQ W4 g32 asym",
        "GPTQ Q4_K g256",
        "GPTQ Q5_K g256",
        "GPTQ Q6_K g256",
    ]
    # llama.cpp's block sizes in bytes over their widths (ggml-common.h): Q4_K 144 B / 256,
    # Q5_K 176 B / 256, Q6_K 210 B / 256 (IN = 1536 = 6 super-blocks)
    want = {"Q4_K": 144 * 8 / 256, "Q5_K": 176 * 8 / 256, "Q6_K": 210 * 8 / 256}
    for spec, label in zip(menu[3:], labels[3:], strict=True):
        assert spec.bits_per_weight(OUT, IN) == want[label.split()[1]]
    # a width of 96 falls back by name: Q4_K → Q5_0 (22 B / 32), Q6_K → Q8_0 (34 B / 32)
    assert menu[3].bits_per_weight(OUT, 96) == 22 * 8 / 32
    assert menu[5].bits_per_weight(OUT, 96) == 34 * 8 / 32
