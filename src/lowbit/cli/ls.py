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

    for name, description in catalog(what.value):
        typer.echo(f"{name:<16} {description}")
