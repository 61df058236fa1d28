"""`econlm data ...`: validate, describe and turn the arXiv economics corpus into task datasets."""

from __future__ import annotations

from pathlib import Path

import click

from econlm.cli._base import ModelRefParam, corpus_option, main, resolve_corpus


@main.group()
def data() -> None:
    """Corpus and task datasets: harvest, validate, stats, build."""


@data.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Count and skip bad lines instead of stopping at the first.")
def validate(paths: tuple[Path, ...], skip_invalid: bool) -> None:
    """Check corpus JSONL files (reads PATHS; writes nothing).

    Every record: required fields, primary category in econ.EM/econ.GN/econ.TH, non-empty
    title and abstract, arXiv id format, no duplicate ids. The first bad line is reported as
    FILE:LINE and the exit code is 2, unless --skip-invalid.
    """
    from econlm.data.corpus import load_papers

    total_skipped = 0
    for path in paths:
        result = load_papers(path, skip_invalid=skip_invalid)
        for message in result.skipped[:20]:
            click.echo(f"skipped {message}", err=True)
        total_skipped += len(result.skipped)
        click.echo(f"{path}: {len(result.papers)} valid records, {len(result.skipped)} skipped")
    if total_skipped:
        click.echo(f"{total_skipped} invalid line(s) skipped in total", err=True)


@data.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Directory for stats.json and stats.png [default: $ECONLM_HOME/stats].")
@click.option("--model", type=ModelRefParam(), default=None,
              help="Model whose tokenizer counts token lengths [default: the default base model].")
@click.option("--no-tokens", is_flag=True, help="Skip token-length percentiles (no model needed).")
def stats(paths: tuple[Path, ...], out: Path | None, model, no_tokens: bool) -> None:
    """Counts per split x category x year and token-length percentiles.

    Reads corpus JSONL files (or directories holding train/validation/test.jsonl); prints tables
    and writes OUT/stats.json and OUT/stats.png.
    """
    from rich.console import Console

    from econlm.data.corpus import split_files
    from econlm.data.stats import corpus_stats, plot_stats, print_stats
    from econlm.io import atomic_write_json
    from econlm.models import DEFAULT_MODEL, ModelRef, load_tokenizer
    from econlm.paths import econlm_home

    files = [f for p in paths for f in (split_files(p).values() if p.is_dir() else [p])]
    tokenizer = None if no_tokens else load_tokenizer(model or ModelRef.parse(DEFAULT_MODEL))
    result = corpus_stats(files, tokenizer)
    print_stats(result, Console())
    out = out or econlm_home() / "stats"
    atomic_write_json(out / "stats.json", result)
    plot_stats(result, out / "stats.png")
    click.echo(f"wrote {out / 'stats.json'} and {out / 'stats.png'}")


@data.command()
@corpus_option
@click.option("--tasks", default="title,classify", show_default=True, help="Comma-separated: title, classify, qa.")
@click.option("--qa-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Question-answer pairs JSONL (needed for task qa; see `econlm qa synthesize`).")
@click.option("--seed", default=0, show_default=True, help="Seed for the order of train examples.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dataset directory.")
def build(corpus: Path | None, tasks: str, qa_file: Path | None, seed: int, out: Path) -> None:
    """Instruction datasets in chat `messages` format, one JSONL per task and split.

    Reads CORPUS/{train,validation,test}.jsonl (and --qa-file); writes OUT/<task>/<split>.jsonl
    and OUT/manifest.json (hashes, templates, counts). OUT is replaced atomically, and only if
    it is empty or econlm wrote it. Train examples never come from validation/test papers.
    """
    import time

    from econlm.data.build import build_datasets

    started = time.perf_counter()
    manifest = build_datasets(resolve_corpus(corpus), tasks, out, seed=seed, qa_file=qa_file)
    for task, counts in manifest["counts"].items():
        click.echo(f"{task:9s} " + "  ".join(f"{split}={n}" for split, n in counts.items()))
    click.echo(f"wrote {out} in {time.perf_counter() - started:.1f}s")
