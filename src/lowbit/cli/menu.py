"""Typed menu and budget options shared by sensitivity, plan and pareto."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

Bits = Annotated[list[int], typer.Option("--bits", help="Bits of a menu spec (repeat).")]
Groups = Annotated[
    list[int], typer.Option("--group-size", help="Group size of the menu specs (repeat).")
]
Algorithm = Annotated[str, typer.Option(help="Algorithm of the menu specs: gptq or rtn.")]
Formats = Annotated[
    list[str],
    typer.Option(
        "--format",
        help="Formats of the menu (repeat): int (at every --bits and --group-size), nf4 (every "
        "--group-size), nvfp4, mxfp4, mxfp8, fp8_e4m3 (per channel), the GGML blocks q4_k, q5_k, "
        "q6_k, q5_0, q5_1, q8_0; alone, a named menu: 'full' is issue 16's (INT2/3/4/8 at groups "
        "32/64/128, NF4, NVFP4, MXFP4, FP8), 'gguf' what GGUF export writes (Q4_0, Q4_1, Q8_0, "
        "Q4_K, Q5_K, Q6_K).",
    ),
]
MenuFile = Annotated[
    Path | None,
    typer.Option("--menu", help="A YAML/JSON list of layer specs; replaces --bits/--group-size."),
]
TablePath = Annotated[
    Path, typer.Option("--table", help="A sensitivity table (JSON) of the same model.")
]
Metric = Annotated[str, typer.Option(help="Loss to minimise: kl (measured), hessian or fisher.")]
DeployTarget = Annotated[
    str,
    typer.Option(
        "--target",
        help="Where the plan deploys: vllm (compressed-tensors; fused q/k/v, gate/up and a "
        "layer's experts share one spec), gguf (the types the GGUF exporter writes) or any.",
    ),
]
Fuse = Annotated[
    bool,
    typer.Option(
        "--fuse/--no-fuse", help="q/k/v and gate/up share one spec (as serving engines fuse them)."
    ),
]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_size(text: str, option: str = "--max-bytes") -> int:
    """``60MB``, ``1.5GiB`` or a plain number of bytes (``option`` names it in errors)."""
    from lowbit.errors import ConfigError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"{option} {text!r} is not a size; write e.g. 60MB, 58MiB, 1.5GB or 60000000"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def menu_specs(
    bits: list[int],
    groups: list[int],
    algorithm: str,
    symmetric: bool,
    menu: Path | None,
    formats: list[str] | None = None,
) -> tuple[Any, ...]:
    from lowbit.allocation.menu import PRESETS, MenuConfig, build_menu
    from lowbit.errors import ConfigError

    names = tuple(formats or ("int",))
    if menu is not None:
        if names != ("int",):
            raise ConfigError("give the menu as --menu FILE or as --format options, not both")
        return load_menu(menu)
    if len(names) == 1 and names[0] in PRESETS:
        return build_menu(*(replace(c, algorithm=algorithm) for c in PRESETS.get(names[0])))
    cfg = MenuConfig(names, tuple(bits), tuple(groups), algorithm, symmetric)
    return build_menu(cfg)


def load_menu(path: Path) -> tuple[Any, ...]:
    from lowbit.plan import load_menu as _load_menu

    return _load_menu(path)


def parse_pins(pins: list[str]) -> dict[str, str]:
    """``TARGET=SPEC`` pairs: a layer name or ``re:`` pattern, and a menu index or label."""
    from lowbit.errors import ConfigError

    out = {}
    for pin in pins:
        target, sep, spec = pin.partition("=")
        if not sep or not target or not spec:
            raise ConfigError(
                f"--pin {pin!r} must be LAYER=SPEC, e.g. model.layers.0.mlp.down_proj=3 "
                "or 're:.*down_proj=GPTQ W8 g64 sym'"
            )
        out[target.strip()] = spec.strip()
    return out
