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


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr for a spelling that still works for this release."""
    click.echo(f"econlm: warning: {old} is deprecated and will be removed in the next release; use {new}", err=True)


class ModelSpecParam(click.ParamType):
    """--model SPEC: ENGINE:MODEL parsed once into an `EngineSpec` (see `econlm.backends`).

    `engines` limits what the command can run; the retired `local:` prefix still means
    transformers: for this release."""

    name = "SPEC"

    def __init__(self, engines: tuple[str, ...] | None = None):
        self.engines = engines

    def convert(self, value, param, ctx):
        from econlm.backends import EngineSpec, parse_spec
        from econlm.errors import UserError

        if isinstance(value, EngineSpec):
            return value
        text = str(value)
        if text.startswith("local:"):
            warn_deprecated(f"'{text}'", f"'transformers:{text.removeprefix('local:')}'")
            text = "transformers:" + text.removeprefix("local:")
        spec = parse_spec(text)
        if self.engines is not None and spec.engine not in self.engines:
            raise UserError(f"{spec}: this command runs {' or '.join(f'{e}:' for e in self.engines)} models")
        return spec


class ModelRefParam(click.ParamType):
    """A model on this machine (no engine prefix), resolved once into a `ModelRef`."""

    name = "MODEL"

    def convert(self, value, param, ctx):
        from econlm.models import ModelRef

        return value if isinstance(value, ModelRef) else ModelRef.parse(value)
