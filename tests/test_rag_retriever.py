"""Hybrid search: a strong keyword match survives fusion with dense neighbours; vague questions."""

from __future__ import annotations

import pytest

from econlm.rag import store
from econlm.rag.loaders import load_bytes
from econlm.rag.retriever import KEYWORD_WEIGHT, HybridRetriever, is_vague, stop_words, tokenize
from fakes import HashEmbedder

# Four texts close to the question in words it shares with all of them, and one that alone holds
# its rare terms ("quokka rule") but is far from it in meaning.
NEIGHBOURS = [
    "Tariffs raise prices and lower wages in the import sector.",
    "Tariffs raise consumer prices and wages fall.",
    "Import tariffs raise prices while wages adjust slowly.",
    "Prices and wages respond to tariffs over time.",
]
KEYWORD_MATCH = "The quokka rule sets a floor for reserve bids in auctions of grazing rights, applied each spring in western districts."
QUESTION = "How do tariffs affect prices and wages under the quokka rule?"


@pytest.fixture
def retriever(tmp_path):
    embedder = HashEmbedder()
    texts = [*NEIGHBOURS, KEYWORD_MATCH]
    documents = [load_bytes(f"doc{i}.txt", text.encode()) for i, text in enumerate(texts)]
    index = store.add_documents(tmp_path / "idx", documents, embedder).index
    return HybridRetriever(index, embedder, candidates=3)


def test_a_keyword_only_match_survives_fusion(retriever):
    """Outside the dense candidates, first by far in BM25: fusion keeps it in the top 2. (Reciprocal
    rank fusion ranked it below every chunk found by both searches.)"""
    hits = retriever.search(QUESTION, k=2)
    match = next((h for h in hits if h.chunk.source == "doc4.txt"), None)
    assert match is not None, [h.chunk.source for h in hits]
    assert match.keyword_rank == 1 and match.dense_rank is None
    assert all(h.dense_rank is not None for h in hits if h is not match)


def test_fused_score_is_the_convex_combination_of_normalised_scores(retriever):
    """BM25 over its best, cosine from -1 over its best (both best among the candidates, here all chunks)."""
    hits = retriever.search(QUESTION, k=5)
    bm25 = retriever.keyword_index.scores(tokenize(QUESTION, stop_words()))
    top_cosine = max(h.cosine for h in hits)
    for hit in hits:
        keyword = bm25[retriever.index.chunks.index(hit.chunk)] / bm25.max()
        dense = (hit.cosine + 1) / (top_cosine + 1)
        assert hit.score == pytest.approx(KEYWORD_WEIGHT * keyword + (1 - KEYWORD_WEIGHT) * dense, abs=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_vague_question_gets_passages_and_an_unrelated_one_none(retriever):
    for question in ("What does this paper find?", "Summarise the document", "What are the main results?"):
        assert is_vague(question)
        assert len(retriever.search(question, k=2)) == 2, question
    for question in ("What does the paper find about tariffs?", "How do penguins fly over glaciers?"):
        assert not is_vague(question)
    assert retriever.search("How do penguins fly over glaciers?", k=2) == []
