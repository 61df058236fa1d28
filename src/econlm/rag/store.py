"""FAISS indexes on disk: written atomically, verified by a manifest before anything is read.

An index is a directory (by default `$ECONLM_HOME/indexes/<name>`):

    manifest.json   format, embedder, index type, counts, the documents in it, sha256 of each file
    index.faiss     the vectors, in FAISS's own binary format (faiss.serialize_index)
    chunks.jsonl    the chunk texts and where they come from (`econlm.types.Chunk`)

Why not LangChain's FAISS vector store: `FAISS.save_local` pickles its docstore (`index.pkl`)
and `load_local` can only read it back with `allow_dangerous_deserialization=True`, i.e. by
unpickling, which runs arbitrary code from a hostile file. econlm's format holds no pickle at all,
and a directory without econlm's manifest (a LangChain index, anything else) is refused
unread. The whole directory is built under a temp name and renamed into place, so a crash never
leaves half an index; the manifest's hashes catch a file damaged or swapped afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json, sha256_file, write_jsonl
from econlm.paths import econlm_home
from econlm.types import Chunk, Document

FORMAT = "econlm-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.jsonl"
INDEX_TYPES = ("flat", "hnsw")
HNSW_M = 32
# 64, not 200: at 50k synthetic vectors it builds 2.5x faster (51 s vs 127 s, one run beside other
# work) for the same recall@10 from efSearch 32 up (0.999 vs 0.9945), so a 1M index builds in minutes.
HNSW_EF_CONSTRUCTION = 64
# Hybrid search asks for 50 candidates, which FAISS takes as the least efSearch. In
# bench/results/rag-20261201T125711Z.json hybrid search at 64 has recall@10 1.0 against exact
# search at 100k chunks and 0.955 at 1M (dense alone: 0.953; 128 gives 0.988 for +0.6 ms p95).
HNSW_EF_SEARCH = 64
MANIFEST_KEYS = ("kind", "index_type", "embedder", "n_chunks", "sources", "created")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PAPERS_INDEX = "papers"


def indexes_root() -> Path:
    return econlm_home() / "indexes"


def index_dir(name: str) -> Path:
    """The directory of the index called `name` under `$ECONLM_HOME/indexes`."""
    if not NAME_RE.match(name):
        raise UserError(
            f"invalid index name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return indexes_root() / name


@dataclass
class Index:
    """A loaded, verified index: FAISS vectors plus the chunks they stand for (same order)."""

    path: Path
    manifest: dict
    faiss_index: object  # faiss.Index
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def embedder(self) -> str:
        return self.manifest["embedder"]["name"]


def new_faiss_index(vectors: np.ndarray, dim: int, index_type: str = "flat"):
    """A FAISS inner-product index holding `vectors` (unit rows, so scores are cosines)."""
    import faiss

    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise UserError(f"unknown index type {index_type!r} (expected one of {', '.join(INDEX_TYPES)})")
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def embed_chunks(chunks: Sequence[Chunk], embedder, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Vectors for chunks, in batches, with a progress bar for long jobs."""
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(chunks), desc="embedding", unit="chunk", disable=not progress) as bar:
        for start in range(0, len(chunks), batch_size):
            batch = [c.text for c in chunks[start : start + batch_size]]
            parts.append(embedder.encode(batch))
            bar.update(len(batch))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)


def write_index(
    path: str | Path,
    chunks: Sequence[Chunk],
    faiss_index,
    *,
    kind: str,
    embedder,
    sources: Sequence[dict],
    index_type: str = "flat",
) -> Index:
    """Write an index directory atomically: files first, the manifest with their hashes last."""
    import faiss

    path = Path(path)
    if faiss_index.ntotal != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but {faiss_index.ntotal} vectors")
    with atomic_dir(path) as tmp:
        (tmp / INDEX_FILE).write_bytes(faiss.serialize_index(faiss_index).tobytes())
        write_jsonl(tmp / CHUNKS_FILE, chunks)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "index_type": index_type,
            "embedder": {"name": embedder.name, "dim": embedder.dim},
            "n_chunks": len(chunks),
            "sources": list(sources),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {name: sha256_file(tmp / name) for name in (INDEX_FILE, CHUNKS_FILE)},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return Index(path, manifest, faiss_index, list(chunks))


def read_manifest(path: str | Path) -> dict:
    """The manifest of an econlm index, or a UserError saying why the directory is not one."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such index")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        pickles = sorted(p.name for p in path.glob("*.pkl")) + sorted(p.name for p in path.glob("*.pickle"))
        why = (
            f" It holds {', '.join(pickles)} (a LangChain or other pickled index): econlm never unpickles"
            " files it did not write; rebuild it with econlm."
            if pickles else ""
        )
        raise UserError(f"{path}: not an econlm index (no {MANIFEST}); refused.{why}")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{manifest_file}: corrupt manifest (not JSON); refused, rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: {MANIFEST} is not an econlm index manifest; refused")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: index format version {manifest.get('format_version')} is not supported "
            f"(this econlm reads {FORMAT_VERSION}); rebuild the index"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {INDEX_FILE, CHUNKS_FILE}:
        raise UserError(f"{path}: {MANIFEST} does not list exactly {INDEX_FILE} and {CHUNKS_FILE}; refused")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise UserError(f"{path}: {MANIFEST} lacks {', '.join(missing)}; refused, rebuild the index")
    return manifest


def load_index(path: str | Path, embedder_name: str | None = None) -> Index:
    """Verify every file against the manifest's sha256, then read the vectors and chunks.

    The FAISS bytes are hashed in memory and deserialised from that same buffer, so the file
    cannot change between the check and the read.
    """
    import faiss

    path = Path(path)
    manifest = read_manifest(path)
    if embedder_name is not None and manifest["embedder"]["name"] != embedder_name:
        raise UserError(
            f"{path}: built with embeddings {manifest['embedder']['name']!r}, but queries use "
            f"{embedder_name!r}; rebuild the index with the same embedder"
        )
    blobs = {}
    for name, expected in manifest["files"].items():
        try:
            blobs[name] = (path / name).read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path}: {name} is missing; the index is incomplete, rebuild it") from None
        if hashlib.sha256(blobs[name]).hexdigest() != expected:
            raise UserError(f"{path}: {name} does not match the sha256 in {MANIFEST} (corrupt or replaced); refused")
    try:
        faiss_index = faiss.deserialize_index(np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
        chunks = [Chunk.model_validate_json(line) for line in blobs[CHUNKS_FILE].decode("utf-8").splitlines() if line]
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the index ({type(exc).__name__}); rebuild it") from None
    _check_chunk_count(path, manifest, len(chunks))
    if faiss_index.ntotal != len(chunks):
        raise UserError(f"{path}: {faiss_index.ntotal} vectors for {len(chunks)} chunks; the index is inconsistent, rebuild it")
    if manifest["index_type"] == "hnsw":
        faiss_index.hnsw.efSearch = HNSW_EF_SEARCH
    return Index(path, manifest, faiss_index, chunks)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer per index at a time (two browser tabs adding files at once)."""
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def source_entry(doc: Document, n_chunks: int) -> dict:
    """A document's row in the manifest; a text file's also names the encoding it was read in."""
    entry = {
        "source": doc.source,
        "sha256": doc.metadata.get("sha256"),
        "pages": len(doc.pages),
        "chunks": n_chunks,
    }
    if "encoding" in doc.metadata:
        entry["encoding"] = doc.metadata["encoding"]
    return entry


@dataclass
class AddResult:
    index: Index
    added: list[str]
    skipped: list[str]  # documents already in the index (same content)


def add_documents(path: str | Path, documents: Iterable[Document], embedder, **split_options) -> AddResult:
    """Split, embed and append documents to a "documents" index (created if absent), atomically."""
    from econlm.rag.splitter import split_documents

    path = Path(path)
    with _locked(path):
        existing = load_index(path, embedder.name) if path.exists() else None
        if existing is not None and existing.kind != "documents":
            raise UserError(f"{path}: is a {existing.kind} index; documents can only be added to a documents index")
        known = {s["sha256"] for s in existing.manifest["sources"]} if existing else set()
        new_docs, skipped = [], []
        for doc in documents:
            if doc.metadata.get("sha256") in known:
                skipped.append(doc.source)
            else:
                new_docs.append(doc)
                known.add(doc.metadata.get("sha256"))
        if not new_docs:
            if existing is None:
                raise UserError("no documents to index")
            return AddResult(existing, [], skipped)
        sources = list(existing.manifest["sources"]) if existing else []
        new_chunks = []
        for doc in new_docs:
            chunks = split_documents([doc], **split_options)
            sources.append(source_entry(doc, len(chunks)))
            new_chunks.extend(chunks)
        vectors = embed_chunks(new_chunks, embedder)
        if existing is None:
            faiss_index, chunks = new_faiss_index(vectors, embedder.dim), new_chunks
        else:
            faiss_index, chunks = existing.faiss_index, existing.chunks + new_chunks
            faiss_index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        index_type = existing.manifest["index_type"] if existing else "flat"
        index = write_index(path, chunks, faiss_index, kind="documents", embedder=embedder, sources=sources,
                            index_type=index_type)
        return AddResult(index, [d.source for d in new_docs], skipped)


def verify_index(path: str | Path) -> dict:
    """The manifest of the index at `path` once its files are checked, else a UserError saying what is wrong.

    Streams each file through sha256 and counts the chunk lines, without loading the vectors: a
    file matching its hash is the one `write_index` wrote, which checked that it held one vector
    per chunk, so what is left to check is the manifest's own chunk count.
    """
    path = Path(path)
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        try:
            digest = sha256_file(path / name)
        except FileNotFoundError:
            raise UserError(f"{path}: {name} is missing; the index is incomplete, rebuild it") from None
        if digest != expected:
            raise UserError(f"{path}: {name} does not match the sha256 in {MANIFEST} (corrupt or replaced); refused")
    with (path / CHUNKS_FILE).open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    _check_chunk_count(path, manifest, lines)
    return manifest


def _check_chunk_count(path: Path, manifest: dict, n_chunks: int) -> None:
    if manifest.get("n_chunks") != n_chunks:
        raise UserError(f"{path}: {MANIFEST} says {manifest.get('n_chunks')} chunks but {CHUNKS_FILE} holds "
                        f"{n_chunks}; the index is inconsistent, rebuild it")


def list_indexes(root: str | Path | None = None, verify: bool = False) -> list[dict]:
    """One row per index directory, with its status: "ok" (files verified), "unverified" (manifest
    read, files not checked: `verify` False) or "broken: <why>" (what loading it would say)."""
    root = Path(root) if root is not None else indexes_root()
    folders = sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    rows = []
    for path in folders:
        try:
            manifest = verify_index(path) if verify else read_manifest(path)
        except UserError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            rows.append({"name": path.name, "path": str(path), "status": f"broken: {reason}"})
            continue
        rows.append({
            "name": path.name,
            "path": str(path),
            "status": "ok" if verify else "unverified",
            "kind": manifest["kind"],
            "index_type": manifest["index_type"],
            "chunks": manifest["n_chunks"],
            "documents": len(manifest["sources"]),
            "embedder": manifest["embedder"]["name"],
            "created": manifest["created"],
        })
    return rows


def delete_index(path: str | Path) -> None:
    """Remove an index directory (an econlm index or a broken one; never an arbitrary folder)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such index")
    if not (path / MANIFEST).is_file() and not (path / INDEX_FILE).is_file():
        raise UserError(f"{path}: does not look like an index directory; not deleting it")
    with _locked(path):
        shutil.rmtree(path)
    (path.parent / f".{path.name}.lock").unlink(missing_ok=True)


def build_papers_index(
    corpus_dir: str | Path,
    out: str | Path,
    embedder,
    splits: Sequence[str] = ("train", "validation", "test"),
    index_type: str = "hnsw",
    limit: int | None = None,
    progress: bool = True,
) -> Index:
    """Index the corpus papers (title + abstract) for the app's Papers page.

    HNSW by default: the corpus is tens of thousands of chunks, where exact search already costs
    several ms a query and grows with every paper harvested. Uploaded documents stay Flat
    (`add_documents`): a few thousand chunks, searched exactly in well under a millisecond.
    """
    from econlm.data.corpus import load_papers, split_files
    from econlm.rag.splitter import paper_document, split_documents

    files = split_files(corpus_dir)
    unknown = [s for s in splits if s not in files]
    if unknown:
        raise UserError(f"unknown split(s) {', '.join(unknown)} (expected some of {', '.join(files)})")
    papers = [p for split in splits for p in load_papers(files[split]).papers][:limit]
    if not papers:
        raise UserError(f"{corpus_dir}: no papers to index")
    documents = [paper_document(p) for p in papers]
    chunks = split_documents(documents)
    vectors = embed_chunks(chunks, embedder, progress=progress)
    per_source = Counter(c.source for c in chunks)
    sources = [{"source": d.source, "chunks": per_source[d.source]} for d in documents]
    return write_index(out, chunks, new_faiss_index(vectors, embedder.dim, index_type), kind="papers",
                       embedder=embedder, sources=sources, index_type=index_type)
