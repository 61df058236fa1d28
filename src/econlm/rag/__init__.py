"""Retrieval-augmented answers over the corpus papers and the user's own documents.

Document (loaders) -> Chunk (splitter) -> vectors (embeddings) -> index dir (store)
-> hits (retriever: dense + BM25 fused) -> Answer with citations (answer).

Kept free of heavy imports: the PDF parser subprocess imports `econlm.rag._pdf_worker` and must
start fast.
"""
