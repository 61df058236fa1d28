"""`econlm models ...`: the packaged base models and the shipped adapter."""

from __future__ import annotations

import click

from econlm.cli._base import ModelRefParam, main


@main.group()
def models() -> None:
    """Base models (packaged GGUF, local folder, GGUF file, hub id) and adapters."""


@models.command("list")
def list_() -> None:
    """List packaged models and the shipped adapter (reads installed packages; writes nothing)."""
    from rich.console import Console
    from rich.table import Table

    from econlm.models import list_models

    table = Table()
    for col in ("name", "kind", "status", "hub_id", "description"):
        table.add_column(col)
    for row in list_models():
        table.add_row(*row.values())
    Console(width=160).print(table)


@models.command()
@click.argument("model", type=ModelRefParam())
def convert(model) -> None:
    """Convert a packaged model or .gguf file once into a safetensors HF folder.

    Reads the GGUF (sha256-checked for packaged models); writes $ECONLM_HOME/models/<name>-<hash>/.
    Later loads reuse that folder.
    """
    import time

    started = time.perf_counter()
    path = model.converted_dir()
    click.echo(f"{path} ({time.perf_counter() - started:.1f}s)")
