"""Retrieval-augmented answers over the corpus papers and the user's own documents.

Document (loaders) -> Chunk (splitter) -> vectors (embeddings) -> index dir (store)
-> hits (retriever: dense + BM25 fused) -> Answer with citations (answer).

The library API (`econlm.rag.assistant`) is importable from here: `from econlm.rag import
Assistant, add_files`. It is imported on first use, because this package is kept free of heavy
imports: the PDF parser subprocess imports `econlm.rag._pdf_worker` and must start fast.
"""

_API = ("AddReport", "AddedFile", "Assistant", "AssistantAnswer", "Citation", "Timings", "add_files", "read_files")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from econlm.rag import assistant

        return getattr(assistant, name)
    raise AttributeError(f"module 'econlm.rag' has no attribute {name!r}")
