"""Corpus statistics: counts per split x category x year, token percentiles, PNG chart."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from econlm.data.stats import corpus_stats
from econlm.models import ModelRef, load_tokenizer


def test_counts_per_split_category_and_year(small_corpus):
    stats = corpus_stats([small_corpus / "train.jsonl", small_corpus / "test.jsonl"])
    assert stats["counts"]["train"] == {"econ.EM": 10, "econ.GN": 10, "econ.TH": 10}
    assert sum(sum(per.values()) for per in stats["years"]["test"].values()) == 12
    assert stats["token_percentiles"] == {}


@pytest.mark.slow
def test_token_percentiles_use_the_default_tokenizer(small_corpus):
    tokenizer = load_tokenizer(ModelRef.parse("smollm2-135m-instruct"))
    stats = corpus_stats([small_corpus / "validation.jsonl"], tokenizer)
    pct = stats["token_percentiles"]["validation"]
    assert 0 < pct["title"]["p50"] <= pct["title"]["p90"] <= pct["title"]["p100"]
    assert pct["abstract"]["p50"] > pct["title"]["p100"] / 2


def test_cli_stats_writes_json_and_png(small_corpus, tmp_path):
    out = tmp_path / "stats"
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "data", "stats", str(small_corpus), "--no-tokens", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Papers per split x primary category" in proc.stdout
    assert json.loads((out / "stats.json").read_text())["counts"]["validation"]["econ.TH"] == 4
    assert (out / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
