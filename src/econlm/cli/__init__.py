"""Console entry point: `econlm`. User mistakes become one line on stderr and exit code 2."""

from __future__ import annotations

import sys

import click

from econlm.allocator import reexec_with_jemalloc
from econlm.errors import UserError

from econlm.cli._base import main as cli
from econlm.cli import data as _data  # noqa: F401  (registers `econlm data ...`)
from econlm.cli import harvest as _harvest  # noqa: F401
from econlm.cli import models as _models  # noqa: F401  (registers `econlm models ...`)
from econlm.cli import train as _train  # noqa: F401  (registers train, merge, bench train)
from econlm.cli import qa as _qa  # noqa: F401  (registers `econlm qa ...`)
from econlm.cli import export as _export  # noqa: F401  (registers export gguf, serve, bench infer)
from econlm.cli import app as _app  # noqa: F401  (registers app, index, bench rag)
from econlm.cli import evaluate as _evaluate  # noqa: F401  (registers eval, baselines, report, reproduce, bench eval)
from econlm.cli import classify as _classify  # noqa: F401  (registers classify, classifier fit)


def main() -> None:
    reexec_with_jemalloc()  # `econlm train` only; before any heavy work: the allocator is fixed at process start
    try:
        cli(prog_name="econlm")
    except UserError as exc:
        click.echo(f"econlm: error: {exc}", err=True)
        sys.exit(exc.exit_code)
