"""Menus of formats for allocation: which layer specs a layer may take, typed.

A menu is a tuple of :class:`~lowbit.plan.LayerSpec` (format value, granularity, algorithm),
never strings. :class:`MenuConfig` names the formats by their registered names (``lowbit ls
formats``); each name's entries come from a registered maker: integers at every bit width and
group size asked for, codebook formats (NF4) at every group size, block formats (NVFP4, MXFP4)
at their one block size, FP8 per output channel. Their stored bits are the formats' own
accounting (codes, scales, zero points, any tensor scale), so allocation compares them fairly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbit._registry import Registry
from lowbit.algorithms import ALGORITHMS, AlgorithmConfig
from lowbit.errors import ConfigError
from lowbit.formats import FORMATS, IntFormat, PerChannel, PerGroup
from lowbit.formats.ggml import KINDS
from lowbit.formats.nvfp4 import NVFP4_BLOCK
from lowbit.plan import LayerSpec
from lowbit.sensitivity.table import check_menu


@dataclass(frozen=True)
class MenuConfig:
    """``formats``: registered format names; ``bits`` and ``groups`` apply to the formats that
    take them (integers: both; NF4: groups)."""

    formats: tuple[str, ...] = ("int",)
    bits: tuple[int, ...] = (2, 3, 4, 8)
    groups: tuple[int, ...] = (64,)
    algorithm: str = "gptq"
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not self.formats:
            raise ConfigError("a menu needs at least one format")
        for name in self.formats:
            MENU_ENTRIES.get(name)  # unknown names: "did you mean"
        if any(g <= 0 for g in self.groups) or not self.groups:
            raise ConfigError(f"menu group sizes must be positive, got {list(self.groups)}")


Maker = Callable[[MenuConfig, AlgorithmConfig], list[LayerSpec]]
MENU_ENTRIES: Registry[Maker] = Registry("menu format")


def _integers(cfg: MenuConfig, algo: AlgorithmConfig) -> list[LayerSpec]:
    return [
        LayerSpec(IntFormat(b, cfg.symmetric), PerGroup(g), algo)
        for b in cfg.bits
        for g in cfg.groups
    ]


def _per_group(name: str) -> Maker:
    def make(cfg: MenuConfig, algo: AlgorithmConfig) -> list[LayerSpec]:
        return [LayerSpec(FORMATS.get(name)(), PerGroup(g), algo) for g in cfg.groups]

    return make


def _fixed_block(name: str, size: int) -> Maker:
    def make(cfg: MenuConfig, algo: AlgorithmConfig) -> list[LayerSpec]:
        return [LayerSpec(FORMATS.get(name)(), PerGroup(size), algo)]

    return make


def _per_channel(name: str) -> Maker:
    def make(cfg: MenuConfig, algo: AlgorithmConfig) -> list[LayerSpec]:
        return [LayerSpec(FORMATS.get(name)(), PerChannel(), algo)]

    return make


MENU_ENTRIES.register("int", _integers)
MENU_ENTRIES.register("nf4", _per_group("nf4"))
MENU_ENTRIES.register("nvfp4", _fixed_block("nvfp4", NVFP4_BLOCK))
MENU_ENTRIES.register("mxfp4", _fixed_block("mxfp4", 32))
MENU_ENTRIES.register("mxfp8", _fixed_block("mxfp8", 32))
MENU_ENTRIES.register("fp8_e4m3", _per_channel("fp8_e4m3"))
for _kind, _spec in KINDS.items():  # GGML block types at their own block (k-quants: 256)
    MENU_ENTRIES.register(_kind, _fixed_block(_kind, _spec.block))

# named menus (``--format NAME`` alone): each a tuple of configs, built in order
PRESETS: Registry[tuple[MenuConfig, ...]] = Registry("menu preset")
# issue 16's menu: INT2/3/4/8 at groups 32/64/128, NF4 (g64), NVFP4, MXFP4, FP8 per channel
FULL = (
    MenuConfig(("int",), (2, 3, 4, 8), (32, 64, 128)),
    MenuConfig(("nf4", "nvfp4", "mxfp4", "fp8_e4m3"), (), (64,)),
)
PRESETS.register("full", FULL)
# what the GGUF exporter writes: Q4_0 and Q8_0 (symmetric integers in fp16-scaled groups of
# 32), Q4_1 (asymmetric INT4 g32) and the k-quants Q4_K, Q5_K, Q6_K (falling back by name)
PRESETS.register(
    "gguf",
    (
        MenuConfig(("int",), (4, 8), (32,)),
        MenuConfig(("int",), (4,), (32,), symmetric=False),
        MenuConfig(("q4_k", "q5_k", "q6_k"), (), (256,)),
    ),
)


def build_menu(*configs: MenuConfig) -> tuple[LayerSpec, ...]:
    """The specs of every config, in order, without repeats (a repeat is dropped, not an
    error: presets overlap)."""
    specs: list[LayerSpec] = []
    for cfg in configs:
        algo = ALGORITHMS.get(cfg.algorithm)()
        for name in cfg.formats:
            specs += [s for s in MENU_ENTRIES.get(name)(cfg, algo) if s not in specs]
    menu = tuple(specs)
    check_menu(menu)
    return menu
