"""Split `Document`s into `Chunk`s page by page, so every chunk keeps the page it came from.

LangChain's `RecursiveCharacterTextSplitter` does the splitting (paragraphs, then lines, then
sentences, then words); Markdown files are split at headings first. The default size, 1,000
characters, is about what all-MiniLM-L6-v2 reads before it truncates (256 word pieces).
"""

from __future__ import annotations

from collections.abc import Iterable

from econlm.types import Chunk, Document, Paper

CHUNK_SIZE = 1000
CHUNK_OVERLAP = 150
# Corpus papers stay whole, one chunk each (arXiv caps abstracts at 1,920 characters), so a hit is
# a paper; the embedder reads the title and the start of the abstract, BM25 reads all of it.
PAPER_CHUNK_SIZE = 2400
# What a corpus-paper chunk carries so a search hit can show it (the arXiv id is its citation).
PAPER_FIELDS = ("arxiv_id", "title", "category", "url")


def split_documents(
    documents: Iterable[Document], chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP
) -> list[Chunk]:
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    plain = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    markdown = RecursiveCharacterTextSplitter.from_language(
        Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    paper = RecursiveCharacterTextSplitter(chunk_size=PAPER_CHUNK_SIZE, chunk_overlap=chunk_overlap)
    splitters = {"markdown": markdown, "paper": paper}
    chunks: list[Chunk] = []
    for doc in documents:
        splitter = splitters.get(doc.metadata.get("kind"), plain)
        # Corpus papers are not paged: their citation is the arXiv id, not a page.
        paged = doc.metadata.get("kind") != "paper"
        chunk_metadata = {k: v for k, v in doc.metadata.items() if k in PAPER_FIELDS}
        for page_number, page_text in enumerate(doc.pages, 1):
            for piece in splitter.split_text(page_text):
                if piece.strip():
                    chunks.append(
                        Chunk(text=piece, source=doc.source, page=page_number if paged else None,
                              metadata=dict(chunk_metadata))
                    )
    return chunks


def paper_document(paper: Paper) -> Document:
    """A corpus paper as a one-page document: its title and abstract, with what a hit shows."""
    return Document(
        source=f"arXiv:{paper.arxiv_id}",
        pages=[f"{paper.title}\n\n{paper.abstract}"],
        metadata={
            "kind": "paper",
            "arxiv_id": paper.arxiv_id,
            "title": paper.title,
            "category": paper.primary_category,
            "url": f"https://arxiv.org/abs/{paper.arxiv_id}",
        },
    )
