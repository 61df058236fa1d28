"""`econlm data harvest`: download economics papers from arXiv's OAI-PMH interface."""

from __future__ import annotations

import re
from pathlib import Path

import click

from econlm.cli.data import data
from econlm.data.harvest import (
    DEFAULT_BASE_URL,
    DEFAULT_CATEGORIES,
    DEFAULT_METADATA_PREFIX,
    DEFAULT_SET,
    LOG_FILE,
    METADATA_PREFIXES,
    PAPERS_FILE,
    STATE_FILE,
)


def _date(ctx, param, value):
    return None if value is None else value.strftime("%Y-%m-%d")


@data.command("harvest")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help=f"Output directory: writes {PAPERS_FILE}, {STATE_FILE} and {LOG_FILE}.")
@click.option("--set", "set_spec", default=DEFAULT_SET, show_default=True,
              help="OAI-PMH set to list (arXiv's economics archive is 'econ').")
@click.option("--from", "from_date", type=click.DateTime(["%Y-%m-%d"]), callback=_date, default=None,
              metavar="YYYY-MM-DD",
              help="Only records added or changed on or after this day (OAI datestamp, YYYY-MM-DD).")
@click.option("--until", "until_date", type=click.DateTime(["%Y-%m-%d"]), callback=_date, default=None,
              metavar="YYYY-MM-DD",
              help="Only records added or changed on or before this day (YYYY-MM-DD).")
@click.option("--categories", default=" ".join(DEFAULT_CATEGORIES), show_default=True,
              help="Primary categories to keep, separated by spaces or commas.")
@click.option("--metadata-prefix", type=click.Choice(METADATA_PREFIXES), default=DEFAULT_METADATA_PREFIX,
              show_default=True,
              help="arXivRaw gives the author string as submitted (as in the corpus) and every "
                   "version's date; arXiv gives authors split into names.")
@click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True, help="OAI-PMH endpoint.")
@click.option("--max-retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="Retries per page for connection errors, timeouts, 5xx and malformed pages "
                   "(exponential backoff from 4 s).")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds to wait for one response.")
@click.option("--restart", is_flag=True, help="Discard a saved harvest in --out and start over.")
def harvest_cmd(out, set_spec, from_date, until_date, categories, metadata_prefix, base_url,
                max_retries, timeout, restart):
    """Harvest arXiv papers over OAI-PMH into the corpus schema (OUT/papers.jsonl).

    Reads the network only. A polite client: at most one request every 3 s, honours 503 +
    Retry-After, retries transient failures. Keeps the latest version of each paper, drops
    deleted ones, keeps papers whose primary category is in --categories, sorted by id.

    Resumable: progress is saved after every page in OUT/harvest_state.json (resumption token)
    and OUT/harvest_log.jsonl (records so far). Re-running the same command with the same --out
    continues where it stopped, without duplicates; a finished harvest is only re-written.
    """
    from econlm.data.harvest import harvest

    result = harvest(
        out, set_spec=set_spec or None, from_date=from_date, until_date=until_date,
        metadata_prefix=metadata_prefix, categories=[c for c in re.split(r"[\s,]+", categories) if c],
        base_url=base_url, restart=restart, max_retries=max_retries, timeout=timeout,
    )
    how = "resumed" if result.resumed else "new harvest"
    click.echo(f"{result.papers} papers -> {result.papers_path} ({how}, {result.requests} requests)")
    click.echo(
        f"{result.records} records received: {result.deleted} deletions, {result.superseded} older "
        f"listings replaced, {result.other_category} papers with another primary category"
    )
    if result.invalid:
        click.echo(f"{len(result.invalid)} records skipped as invalid, e.g. {result.invalid[0]}", err=True)
