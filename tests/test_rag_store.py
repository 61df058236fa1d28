"""Index directories: round trip, atomic writes, and refusal of corrupt or foreign indexes."""

from __future__ import annotations

import json
import math
import pickle
import random

import pytest

from econlm.errors import UserError
from econlm.rag import store
from econlm.rag.loaders import load_bytes
from fakes import HashEmbedder, make_pdf


@pytest.fixture
def embedder():
    return HashEmbedder()


def docs(*texts):
    return [load_bytes(f"doc{i}.txt", t.encode()) for i, t in enumerate(texts)]


def test_add_documents_round_trip_and_dedupe(tmp_path, embedder):
    path = tmp_path / "mine"
    first = store.add_documents(path, docs("Tariffs raise prices.", "Quotas limit imports."), embedder)
    assert first.added == ["doc0.txt", "doc1.txt"] and first.skipped == []
    pdf = load_bytes("report.pdf", make_pdf(["Inflation page one.", "Wages page two."]))
    second = store.add_documents(path, [*docs("Tariffs raise prices."), pdf], embedder)
    assert second.added == ["report.pdf"] and second.skipped == ["doc0.txt"]

    index = store.load_index(path, embedder.name)
    assert index.kind == "documents" and index.faiss_index.ntotal == len(index.chunks) == 4
    assert [(c.source, c.page) for c in index.chunks][-2:] == [("report.pdf", 1), ("report.pdf", 2)]
    assert [s["source"] for s in index.manifest["sources"]] == ["doc0.txt", "doc1.txt", "report.pdf"]
    # The vectors come back as written: a chunk is its own nearest neighbour.
    vector = embedder.encode([index.chunks[3].text])
    assert index.faiss_index.search(vector, 1)[1][0][0] == 3


def test_listing_and_deleting(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("ECONLM_HOME", str(tmp_path))
    store.add_documents(store.index_dir("alpha"), docs("Alpha text about trade."), embedder)
    (store.indexes_root() / "broken").mkdir()
    (store.indexes_root() / "broken" / "index.faiss").write_bytes(b"junk")
    rows = {r["name"]: r for r in store.list_indexes(verify=True)}
    assert rows["alpha"]["status"] == "ok" and rows["alpha"]["documents"] == 1 and rows["alpha"]["kind"] == "documents"
    assert rows["broken"]["status"] == "broken: not an econlm index (no manifest.json); refused."
    assert store.list_indexes()[0]["status"] == "unverified"  # manifests only
    store.delete_index(store.index_dir("broken"))
    store.delete_index(store.index_dir("alpha"))
    assert store.list_indexes() == []
    (tmp_path / "keep").mkdir()
    with pytest.raises(UserError, match="does not look like an index directory"):
        store.delete_index(tmp_path / "keep")


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 65])
def test_index_names_are_validated(name):
    with pytest.raises(UserError, match="invalid index name"):
        store.index_dir(name)


def test_a_failed_write_leaves_the_old_index_intact(tmp_path, embedder):
    path = tmp_path / "idx"
    store.add_documents(path, docs("Original document on fiscal policy."), embedder)
    before = (path / store.MANIFEST).read_text()

    class Exploding(HashEmbedder):
        def encode(self, texts):
            raise RuntimeError("embedding crashed half way")

    with pytest.raises(RuntimeError):
        store.add_documents(path, docs("A second document."), Exploding())
    assert (path / store.MANIFEST).read_text() == before
    assert len(store.load_index(path, embedder.name).chunks) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.") and p.suffix == ".tmp"]


@pytest.mark.parametrize("damaged", [store.INDEX_FILE, store.CHUNKS_FILE])
def test_a_corrupt_file_is_refused(tmp_path, embedder, damaged):
    path = tmp_path / "idx"
    store.add_documents(path, docs("Some text on labour supply."), embedder)
    data = bytearray((path / damaged).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / damaged).write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{damaged} does not match the sha256 in manifest.json"):
        store.load_index(path)


def test_corrupt_or_foreign_manifest_is_refused(tmp_path, embedder):
    path = tmp_path / "idx"
    store.add_documents(path, docs("Text."), embedder)
    (path / store.MANIFEST).write_text("{ not json")
    with pytest.raises(UserError, match="corrupt manifest"):
        store.load_index(path)
    (path / store.MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not an econlm index manifest"):
        store.load_index(path)
    manifest = {"format": store.FORMAT, "format_version": 1, "files": {"../../etc/passwd": "0" * 64}}
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not list exactly"):
        store.load_index(path)


class _Payload:
    """Unpickling this runs code (creates a marker file): what a hostile index.pkl would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_foreign_pickled_index_is_never_unpickled(tmp_path):
    """A LangChain-style index (index.faiss + index.pkl, no manifest) is refused unread."""
    marker = tmp_path / "pwned"
    foreign = tmp_path / "langchain-index"
    foreign.mkdir()
    (foreign / "index.faiss").write_bytes(b"\x00" * 64)
    (foreign / "index.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError, match=r"not an econlm index \(no manifest.json\).*index.pkl.*never unpickles"):
        store.load_index(foreign)
    assert not marker.exists()


def test_queries_must_use_the_embedder_that_built_the_index(tmp_path, embedder):
    store.add_documents(tmp_path / "idx", docs("Text."), embedder)
    with pytest.raises(UserError, match="built with embeddings 'fake:hash-bow-2048'"):
        store.load_index(tmp_path / "idx", "all-MiniLM-L6-v2@other")


def test_papers_index_from_the_corpus(small_corpus, tmp_path, embedder):
    index = store.build_papers_index(small_corpus, tmp_path / "papers", embedder, progress=False)
    assert index.kind == "papers" and len(index.manifest["sources"]) == 54
    chunk = index.chunks[0]
    assert chunk.source.startswith("arXiv:") and chunk.page is None
    assert chunk.metadata["url"] == f"https://arxiv.org/abs/{chunk.metadata['arxiv_id']}"
    assert chunk.metadata["category"] in ("econ.EM", "econ.GN", "econ.TH")
    hnsw = store.build_papers_index(small_corpus, tmp_path / "hnsw", embedder, splits=["test"],
                                    index_type="hnsw", progress=False)
    assert store.load_index(hnsw.path).faiss_index.hnsw.efSearch == store.HNSW_EF_SEARCH
    with pytest.raises(UserError, match="unknown split"):
        store.build_papers_index(small_corpus, tmp_path / "x", embedder, splits=["dev"])


def lucene_bm25(corpus: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """BM25 as Lucene scores it, written from the formula (Kamphuis et al., ECIR 2020, "Which BM25 do you mean?"):
    sum over query terms of log(1 + (N - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len / avglen))."""
    n, avg = len(corpus), sum(map(len, corpus)) / len(corpus)
    df = {t: sum(t in doc for doc in corpus) for t in {t for doc in corpus for t in doc}}
    scores = []
    for doc in corpus:
        total = 0.0
        for term in query:
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                total += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avg))
        scores.append(total)
    return scores


def test_keyword_index_scores_as_lucene_bm25():
    """bm25s's scores are Lucene's BM25, computed by hand; the ranking keeps only chunks sharing a term."""
    from econlm.rag.retriever import KeywordIndex, stop_words, tokenize

    rng = random.Random(0)
    vocabulary = [f"term{i}" for i in range(40)]
    texts = [" ".join(rng.choices(vocabulary, weights=range(40, 0, -1), k=rng.randint(3, 30))) for _ in range(60)]
    texts += ["the and of", "tariff tariff quota"]  # only stop words; a repeated rare term
    stop = stop_words()
    corpus = [tokenize(t, stop) for t in texts]
    keyword = KeywordIndex(texts, stop)
    for query in (["term3", "term17", "term17"], ["tariff", "unknown"], ["term39", "quota", "term0"], ["unknown"]):
        expected = lucene_bm25(corpus, query)
        assert keyword.scores(query) == pytest.approx(expected, rel=1e-5)
        best = sorted((s for s in expected if s > 0), reverse=True)
        # The same ranking up to exact ties (bm25s sums in float32, which may order tied chunks either way).
        assert [expected[i] for i in keyword.top(query, 10)] == pytest.approx(best[:10], rel=1e-5)
        everything = keyword.top(query, len(texts))  # every chunk sharing a term, none without one
        assert sorted(everything) == [i for i, s in enumerate(expected) if s > 0]
        assert [expected[i] for i in everything] == pytest.approx(best, rel=1e-5)
    assert KeywordIndex(["the of and", "a"], stop).top(["the"], 5) == []  # nothing but stop words


def test_hnsw_finds_what_exact_search_finds():
    """On a few thousand clustered vectors, HNSW at the shipped efSearch returns >= 95% of Flat's top 10."""
    from econlm.bench.rag import recall, synthetic_vectors

    vectors, queries = synthetic_vectors(4000, 100, dim=64)
    exact = store.new_faiss_index(vectors, 64, "flat").search(queries, 10)[1]
    approximate = store.new_faiss_index(vectors, 64, "hnsw").search(queries, 10)[1]
    assert recall(approximate, exact) >= 0.95


def test_a_tiny_rag_benchmark(small_corpus, tmp_path, embedder):
    """`econlm bench rag` end to end on a few hundred chunks: every figure present, exact search its own reference."""
    from econlm.bench.rag import EF_SEARCH, run_rag_bench

    partial = []
    result = run_rag_bench(small_corpus, tmp_path, embedder, sizes=[300, 200], n_queries=12, ingest_papers=4,
                           on_size=partial.append)
    assert [len(p["sizes"]) for p in partial] == [1, 2] and not partial[0]["complete"] and result["complete"]
    result["sizes"] = result["sizes"][:1]
    assert result["ingestion"]["pages"] == 4 and result["ingestion"]["pages_per_s"] > 0
    (row,) = result["sizes"]
    assert row["n"] == 300 and row["flat"]["recall_at_10"] == 1.0 and row["peak_rss_mb"] > 0
    assert set(row["hnsw"]["efSearch"]) == {str(ef) for ef in EF_SEARCH}
    hybrid = row["hybrid"]
    assert hybrid["hnsw"]["efSearch"] == store.HNSW_EF_SEARCH and hybrid["hnsw"]["timed_queries"] == 12
    assert hybrid["hnsw"]["mean_hits"] > 0 and hybrid["hnsw"]["recall_at_10"] >= 0.95  # 300 vectors: HNSW is exact
    assert [t["measured"] for t in result["targets"]] == [False, False]
