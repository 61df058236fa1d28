"""Index directories: round trip, atomic writes, and refusal of corrupt or foreign indexes."""

from __future__ import annotations

import json
import pickle

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
    rows = {r["name"]: r for r in store.list_indexes()}
    assert rows["alpha"]["status"] == "ok" and rows["alpha"]["documents"] == 1 and rows["alpha"]["kind"] == "documents"
    assert rows["broken"]["status"].startswith("invalid:")
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
