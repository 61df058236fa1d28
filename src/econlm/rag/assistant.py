"""The research assistant as a library: add files to an index, ask it questions, get cited answers.

`econlm index add`, `econlm ask` and the app's My documents page all call these functions, so a
notebook gets exactly what they do:

    from econlm.rag import Assistant, add_files
    add_files("mine", ["report.pdf", "notes.txt"])
    reply = Assistant("mine").ask("What did the central bank do in 2023?")
    reply.text, reply.cited, reply.passages

An index is named (a directory under `$ECONLM_HOME/indexes`): `papers` is the corpus papers
(`econlm index build`), any other name holds uploaded documents.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from econlm.errors import UserError
from econlm.rag import store
from econlm.rag.loaders import ParseLimits, load_bytes, load_path
from econlm.types import Answer, Chunk, Document, Record

PAPERS = store.PAPERS_INDEX
DEFAULT_K = 5
UTF8 = ("utf-8", "utf-8-sig")


class AddedFile(Record):
    source: str
    pages: int
    chunks: int
    encoding: str | None = None  # the encoding a text file was read in; None for a PDF

    def __str__(self) -> str:
        """What the upload report and `econlm index add` print; the encoding where it is not UTF-8."""
        encoding = f", read as {self.encoding}" if self.encoding not in (None, *UTF8) else ""
        return f"{self.source} ({self.pages} pages, {self.chunks} chunks{encoding})"


class AddReport(Record):
    """What happened to each file: indexed, already there (same content), or refused (with why)."""

    index: str
    added: list[AddedFile] = []
    skipped: list[str] = []  # "NAME is already in 'INDEX' (same content)"
    errors: list[str] = []  # one line per refused file, naming it


class Citation(Record):
    """Where a cited passage comes from."""

    label: str  # as written in the answer: [arXiv:ID] or [file, p. N]
    source: str
    page: int | None = None
    arxiv_id: str | None = None


class Timings(Record):
    retrieve_s: float  # embedding the question and searching the index
    answer_s: float  # the model writing the answer (0 when nothing relevant was found)


class AssistantAnswer(Answer):
    """An `Answer` with what a caller outside the app needs: where each citation comes from, which
    index and model answered, and how long each step took."""

    question: str
    index: str
    model: str
    cited: list[Citation] = []
    timings: Timings

    def summary(self) -> dict:
        """The answer as `econlm ask --json` prints it."""
        return {
            "question": self.question,
            "index": self.index,
            "answer": self.text,
            "citations": [c.model_dump() for c in self.cited],
            "unsupported_citations": self.unsupported_citations,
            "passages": [{**citation(chunk).model_dump(), "text": chunk.text} for chunk in self.passages],
            "model": self.model,
            "timings": self.timings.model_dump(),
        }


def citation(chunk: Chunk) -> Citation:
    from econlm.rag.answer import citation_label

    return Citation(label=citation_label(chunk), source=chunk.source, page=chunk.page,
                    arxiv_id=chunk.metadata.get("arxiv_id"))


def existing_index(name: str) -> Path:
    """The directory of the index `name`; a bad name or a missing index is a UserError saying what to do."""
    path = store.index_dir(name)
    if not path.is_dir():
        how = "build it with `econlm index build`" if name == PAPERS else f"create it with `econlm index add {name} FILES...`"
        raise UserError(f"no index named {name!r} under {store.indexes_root()}; {how}")
    return path


def default_embedder():
    from econlm.rag.embeddings import MiniLMEmbedder

    return MiniLMEmbedder()


def read_files(files: Iterable[str | Path | tuple[str, bytes]], limits: ParseLimits) -> tuple[list[Document], list[str]]:
    """Each file parsed on its own (one bad file costs only itself): the documents, and one error line per bad file.

    A file is a path, or (name, content) as the app's uploader gives it.
    """
    documents, errors = [], []
    for item in files:
        try:
            documents.append(load_bytes(*item, limits) if isinstance(item, tuple) else load_path(item, limits))
        except UserError as exc:
            errors.append(str(exc))
    return documents, errors


def add_files(index: str, files: Iterable[str | Path | tuple[str, bytes]], embedder=None,
              limits: ParseLimits = ParseLimits(), keep_good: bool = False) -> AddReport:
    """Parse, split, embed and add files to the documents index `index` (created if new), atomically.

    With a bad file among them nothing is added and a UserError names every bad file, unless
    `keep_good` (the app's upload: the good files go in, the bad ones are listed in `errors`).
    Files already in the index (same bytes) are skipped.
    """
    if index == PAPERS:
        raise UserError(f"'{PAPERS}' is the corpus papers index (`econlm index build`); add files to an index of another name")
    path = store.index_dir(index)
    documents, errors = read_files(files, limits)
    if errors and not keep_good:
        raise UserError(f"{'; '.join(errors)}; nothing was added to '{index}'")
    report = AddReport(index=index, errors=errors)
    if documents:
        result = store.add_documents(path, documents, embedder if embedder is not None else default_embedder())
        sources = {s["source"]: s for s in result.index.manifest["sources"]}
        report.added = [AddedFile(source=n, pages=sources[n]["pages"], chunks=sources[n]["chunks"],
                                  encoding=sources[n].get("encoding")) for n in result.added]
        report.skipped = [f"{n} is already in '{index}' (same content)" for n in result.skipped]
    return report


def clean_question(question: str) -> str:
    if not question.strip():
        raise UserError("the question is empty; ask something, e.g. econlm ask \"What drives inflation?\"")
    return question.strip()


class Assistant:
    """One index and one model, loaded once; ask as many questions as you like.

    `model` is an ENGINE:MODEL spec (see `econlm.backends`), a backend already built, or None
    for the app's default model. The index is loaded (and verified) at once; the model on the
    first question, so a bad index fails before a model is loaded.
    """

    def __init__(self, index: str = PAPERS, model=None, embedder=None, k: int = DEFAULT_K):
        from econlm.rag.retriever import HybridRetriever

        self.index = index
        path = existing_index(index)
        self.embedder = embedder if embedder is not None else default_embedder()
        self.retriever = HybridRetriever(store.load_index(path, self.embedder.name), self.embedder)
        self.k = k
        self._model = model
        self._backend = None

    @property
    def backend(self):
        from econlm.backends import EngineSpec, get_backend

        if self._backend is None:
            model = self._model
            if model is None:
                from econlm.backends.choice import backend_choice

                model = backend_choice().spec
            self._backend = get_backend(model) if isinstance(model, (str, EngineSpec)) else model
        return self._backend

    @property
    def where(self) -> str:
        return "the papers index" if self.index == PAPERS else f"the index '{self.index}'"

    def search(self, question: str, k: int | None = None):
        """The passages a question retrieves (`econlm.rag.retriever.Hit`s, best first; maybe none)."""
        return self.retriever.search(clean_question(question), k or self.k)

    def ask(self, question: str, k: int | None = None) -> AssistantAnswer:
        """Retrieve, then answer from the passages with a citation after each claim (or say nothing relevant was found)."""
        from econlm.rag.answer import answer

        question = clean_question(question)
        backend = self.backend  # loaded before the clock starts
        started = time.perf_counter()
        hits = self.retriever.search(question, k or self.k)
        retrieved = time.perf_counter()
        reply = answer(question, hits, backend, self.where, self.embedder)
        answered = time.perf_counter()
        by_label = {citation(h.chunk).label: citation(h.chunk) for h in hits}
        return AssistantAnswer(
            **reply.model_dump(),
            question=question,
            index=self.index,
            model=backend.name,
            cited=[by_label[label] for label in reply.citations],
            timings=Timings(retrieve_s=round(retrieved - started, 4), answer_s=round(answered - retrieved, 4) if hits else 0.0),
        )
