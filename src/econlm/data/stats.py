"""Describe corpus files: counts per split x category x year and token-length percentiles.

Token lengths use the default model's tokenizer, so they say how much context training needs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from econlm.data.corpus import load_papers
from econlm.types import CATEGORIES, Paper

PERCENTILES = (50, 90, 95, 99, 100)


def split_name(path: Path) -> str:
    return path.stem


def corpus_stats(paths: list[Path], tokenizer=None) -> dict:
    """Counts and (if a tokenizer is given) token-length percentiles for each file."""
    stats: dict = {"files": {}, "counts": {}, "years": {}, "token_percentiles": {}}
    for path in paths:
        papers = load_papers(path).papers
        name = split_name(path)
        stats["files"][name] = str(path)
        stats["counts"][name] = dict(Counter(p.primary_category for p in papers))
        stats["years"][name] = {
            str(y): dict(Counter(p.primary_category for p in papers if (p.year or "unknown") == y))
            for y in sorted({p.year or "unknown" for p in papers}, key=str)
        }
        if tokenizer is not None:
            stats["token_percentiles"][name] = _token_percentiles(papers, tokenizer)
    return stats


def _token_percentiles(papers: list[Paper], tokenizer) -> dict[str, dict[str, int]]:
    out = {}
    for field in ("title", "abstract"):
        lengths = [len(ids) for ids in tokenizer([getattr(p, field) for p in papers], add_special_tokens=False)["input_ids"]]
        out[field] = {f"p{q}": int(np.percentile(lengths, q)) for q in PERCENTILES}
    return out


def print_stats(stats: dict, console) -> None:
    from rich.table import Table

    cats = list(CATEGORIES)
    table = Table(title="Papers per split x primary category")
    for col in ("split", *cats, "total"):
        table.add_column(col, justify="right")
    for name, counts in stats["counts"].items():
        table.add_row(name, *(f"{counts.get(c, 0):,}" for c in cats), f"{sum(counts.values()):,}")
    console.print(table)

    years = sorted({y for per in stats["years"].values() for y in per}, key=str)
    names = list(stats["years"])
    table = Table(title="Papers per first-submission year (all categories)")
    for col in ("year", *names):
        table.add_column(col, justify="right")
    for y in years:
        table.add_row(y, *(str(sum(stats["years"][n].get(y, {}).values())) for n in names))
    console.print(table)

    if stats["token_percentiles"]:
        table = Table(title="Token lengths (default model tokenizer)")
        table.add_column("split")
        table.add_column("field")
        for q in PERCENTILES:
            table.add_column(f"p{q}", justify="right")
        for name, fields in stats["token_percentiles"].items():
            for field, pct in fields.items():
                table.add_row(name, field, *(str(pct[f"p{q}"]) for q in PERCENTILES))
        console.print(table)


def plot_stats(stats: dict, out_png: Path) -> None:
    """Bar charts: category mix per split, and papers per year per category (all splits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from econlm.io import atomic_open

    cats = list(CATEGORIES)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(stats["counts"])
    x = np.arange(len(names))
    width = 0.8 / len(cats)
    for i, c in enumerate(cats):
        ax1.bar(x + i * width, [stats["counts"][n].get(c, 0) for n in names], width, label=c)
    ax1.set_xticks(x + width, names)
    ax1.set_ylabel("papers")
    ax1.set_title("Papers per split and primary category")
    ax1.legend()

    years = sorted({y for per in stats["years"].values() for y in per if y != "unknown"}, key=str)
    bottom = np.zeros(len(years))
    for c in cats:
        vals = np.array([sum(stats["years"][n].get(y, {}).get(c, 0) for n in names) for y in years])
        ax2.bar(years, vals, bottom=bottom, label=c)
        bottom += vals
    ax2.set_title("Papers per first-submission year (all splits)")
    ax2.tick_params(axis="x", rotation=45)
    ax2.legend()
    fig.tight_layout()
    with atomic_open(out_png, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
