"""``lowbit ls``: what lowbit knows (formats, algorithms, architectures, models, texts,
hardware)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class What(str, Enum):
    formats = "formats"
    algorithms = "algorithms"
    architectures = "architectures"
    models = "models"
    texts = "texts"
    hardware = "hardware"
    tasks = "tasks"


def ls(what: Annotated[What, typer.Argument(help="What to list.")] = What.models) -> None:
    """List the registries. Example: lowbit ls architectures"""
    from lowbit.catalog import catalog

    if what is What.architectures:
        _architectures()
        return
    for name, description in catalog(what.value):
        typer.echo(f"{name:<16} {description}")


def _architectures() -> None:
    """Families × stages, discovered on a tiny twin of each family's default config."""
    from rich.console import Console
    from rich.table import Table

    from lowbit.api.inspect import STAGES, architectures_table

    table = Table(title="families proven end to end (lowbit inspect MODEL: any other model)")
    table.add_column("family")
    for stage in STAGES:
        table.add_column(stage)
    rows = architectures_table()
    for row in rows:
        table.add_row(row["family"], *(_cell(row[s]) for s in STAGES))
    Console(width=200).print(table)
    for row in rows:
        for stage in STAGES:
            if row[stage].startswith("no:"):
                typer.echo(f"{row['family']} {stage}: {row[stage][4:]}")


def _cell(support: str) -> str:
    return "✓" if support.startswith("yes") else "✗"
