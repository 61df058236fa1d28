"""The `econlm` click group, the `bench` group, and options shared by every subcommand.

Each stage's commands live in their own module under `econlm.cli` and are thin wrappers of one
library function; heavy imports (torch, transformers) happen inside the command bodies so that
`econlm --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from econlm import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="econlm")
def main() -> None:
    """econlm: fine-tune, evaluate and serve language models for economics research.

    Corpus-reading commands take --corpus DIR (default: $ECONLM_DATA); writing commands take
    --out; user state (converted models, indexes) lives under $ECONLM_HOME
    (default ~/.cache/econlm).
    """


@main.group()
def bench() -> None:
    """Benchmarks: each runs a named baseline side by side with econlm and writes JSON."""


def corpus_option(f):
    """--corpus DIR, defaulting to $ECONLM_DATA (resolved lazily so --help never fails)."""
    return click.option(
        "--corpus",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Corpus directory with train/validation/test.jsonl [default: $ECONLM_DATA].",
    )(f)


def resolve_corpus(corpus: Path | None) -> Path:
    from econlm.paths import default_corpus

    return corpus if corpus is not None else default_corpus()
