"""``lowbit inspect``: what lowbit finds in a model (blocks, linear groups, smoothing pairs,
experts and routers, traits) and what each stage can do with it."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def inspect(
    model: Annotated[
        str,
        typer.Argument(help="A model source, a model directory, or a config.json (no weights)."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe a model's architecture. Example: lowbit inspect smollm2-135m"""
    from lowbit.api.inspect import inspect_model

    found = inspect_model(model)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    _print(found)


def _print(found: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]{found['model']}[/]: {found['model_type']} ({found['origin']} spec "
        f"{found['architecture']!r}), {found['blocks']} blocks under {found['blocks_path']}, "
        f"{found['linears']} quantizable linears; embedding {found['embed_path']}"
    )
    if found["traits"]:
        console.print("model: " + ", ".join(found["traits"]))
    if found["unsupported"]:
        console.print(f"[red]not quantizable[/]: {found['unsupported']}")
    for kind in found["kinds"]:
        table = Table(title=f"blocks {_ranges(kind['blocks'])}", title_justify="left")
        table.add_column("group (shared input)")
        table.add_column("smoothing")
        pairs = {p["linears"][0]: p for p in kind["smoothing_pairs"]}
        for group in _shown(kind["groups"]):
            pair = pairs.get(group[0])
            how = "" if pair is None else f"← {pair['prev']}"
            if pair and pair["norm_offset"]:
                how += f" ({pair['norm_offset']:g} + w)"
            table.add_row(", ".join(group), how)
        console.print(table)
        extra = [f"routers: {', '.join(kind['routers'])}"] if kind["routers"] else []
        extra += [f"traits: {', '.join(kind['traits'])}"] if kind["traits"] else []
        for line in extra:
            console.print("  " + line)
    stages = Table(title="stages", title_justify="left")
    stages.add_column("stage")
    stages.add_column("support")
    for stage, support in found["stages"].items():
        stages.add_row(stage, support)
    console.print(stages)


def _shown(groups: list[list[str]], limit: int = 12) -> list[list[str]]:
    """The groups, the experts' middle elided when there are many."""
    if len(groups) <= limit:
        return groups
    return [*groups[: limit - 2], ["…"], *groups[-1:]]


def _ranges(blocks: list[int]) -> str:
    out, start = [], blocks[0]
    for prev, cur in zip(blocks, [*blocks[1:], None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = cur if cur is not None else start
    return ", ".join(out)
