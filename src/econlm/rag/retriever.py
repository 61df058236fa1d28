"""Hybrid retrieval: dense (FAISS, cosine) and keyword (BM25) scores fused by a convex combination.

Dense search finds paraphrases; BM25 finds exact terms (names, acronyms, JEL codes) that a small
embedder blurs. The candidates (the best of each search) are scored by both, each score
normalised by its best among the candidates (BM25 from 0, its least possible score; cosine from
-1, its least possible), and fused as KEYWORD_WEIGHT * bm25 + (1 - KEYWORD_WEIGHT) * cosine:
the convex combination with "theoretical min-max" normalisation of Bruch et al. (2023, "An
Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS), which beat reciprocal rank fusion
in and out of domain there and needs few labelled queries to set its one weight. Rank fusion
was used before and failed here: it keeps only ranks, so a paper first by far in BM25 but absent
from the dense list scored 1/(60 + 1) and fell below every paper both searches found, however
weakly (hybrid recall@10 0.902 against BM25's 0.925 over the papers index, docs/assistant.md).

A fused list always has *some* top-k, so relevance is decided separately: a passage counts only
if its cosine similarity reaches `min_cosine`, or it shares a content word with the question and
reaches the lower `min_keyword_cosine` (at any cosine when every word of the question is in the
index); no floor applies to a question that names no subject
(`is_vague`). When nothing qualifies, `search` returns no hits and the answer step says so
instead of letting the model invent an answer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from econlm.types import Chunk

_WORD_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
# BM25's share of the fused score. Chosen on the retrieval benchmark's 67 questions about
# validation papers only (`econlm eval --task rag`; the 107 about test papers measure it): every
# weight from 0.5 to 0.85 ranks best there (recall@10 0.97, MRR 0.91, with the floors below), so
# the middle of that range. Below it dense neighbours push keyword matches down again; above it
# dense similarity no longer breaks BM25's near-ties.
KEYWORD_WEIGHT = 0.7
MIN_COSINE = 0.25  # all-MiniLM-L6-v2: unrelated sentences score about 0.0-0.15, related ones 0.3+
# A shared word counts only if the passage is not unrelated in meaning: "on the fly" in an
# auction paper (cosine 0.09) does not answer "How do penguins fly?". That question has a word
# no indexed text holds; a question whose every word the index knows keeps the passages sharing
# one whatever their cosine (a validation question's source paper, ranked 8th by BM25, scored
# 0.079), so the floor guards only against questions about what the index lacks.
MIN_KEYWORD_COSINE = 0.10


@functools.cache
def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def tokenize(text: str, stop: frozenset[str]) -> list[str]:
    """Lower-cased words without the `stop` words (BM25's terms; no stemming)."""
    return [w for w in _WORD_RE.findall(text.lower()) if len(w) > 1 and w not in stop]


# Words that ask for a kind of answer or point at a text without naming a subject.
GENERIC_WORDS = frozenset({
    "paper", "papers", "article", "articles", "report", "reports", "study", "studies", "work", "author", "authors",
    "document", "documents", "file", "files", "passage", "passages", "text", "according", "find", "finds", "found",
    "finding", "findings", "result", "results", "conclusion", "conclusions", "conclude", "concludes", "show", "shows",
    "main", "key", "point", "points", "summarise", "summarize", "summary", "overview", "say", "says", "tell",
    "describe", "describes", "explain", "explains", "discuss", "discusses", "contribution", "contributions",
    "topic", "topics", "did", "does",
})


def is_vague(text: str) -> bool:
    """Whether `text` names no subject: no word beyond stop words and `GENERIC_WORDS` ("What does
    this paper find?", "Summarise the document"). Such a question cannot be off-topic, so no
    relevance floor applies to its search (it is about whatever comes closest), and no relevance
    gate to its answer (`econlm.rag.answer.finalize`)."""
    return set(tokenize(text, stop_words())) <= GENERIC_WORDS


class KeywordIndex:
    """Okapi BM25 over chunk texts, from `bm25s` (Lucene's variant: idf log(1 + (N - df + 0.5) / (df + 0.5)), k1 1.5, b 0.75).

    bm25s keeps each (term, chunk) weight in a sparse matrix, so a query sums a few of its columns
    into one score per chunk (docs/assistant.md gives its speed). Lucene's idf is never negative,
    so a chunk scores above zero exactly when it shares a term with the query. Terms are turned
    into ids chunk by chunk, so a million chunks never exist as lists of strings at once.
    """

    def __init__(self, texts: Iterable[str], stop: frozenset[str]):
        import bm25s

        self.vocabulary: dict[str, int] = {}
        term_ids = [[self.vocabulary.setdefault(t, len(self.vocabulary)) for t in tokenize(text, stop)] for text in texts]
        self.n_chunks = len(term_ids)
        self._bm25 = None
        if self.vocabulary:  # bm25s cannot index a corpus without a single term
            self._bm25 = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
            self._bm25.index((term_ids, self.vocabulary), create_empty_token=False, show_progress=False)

    def scores(self, query_terms: list[str]) -> np.ndarray:
        """One BM25 score per chunk (a repeated query term counts again; unknown terms add nothing)."""
        ids = [self.vocabulary[t] for t in query_terms if t in self.vocabulary]
        if not ids:
            return np.zeros(self.n_chunks, dtype=np.float32)
        return self._bm25.get_scores_from_ids(ids)

    def top(self, query_terms: list[str], n: int) -> list[int]:
        """Ids of at most n chunks sharing a term with the query, best score first (ties: lower id)."""
        return best_matching(self.scores(query_terms), n)


def best_matching(scores: np.ndarray, n: int) -> list[int]:
    """Ids of at most n chunks of positive BM25 `scores`, best first (ties: lower id)."""
    matching = np.flatnonzero(scores > 0)
    if len(matching) > n:
        matching = matching[np.argpartition(-scores[matching], n - 1)[:n]]
    order = np.lexsort((matching, -scores[matching]))
    return [int(i) for i in matching[order]]


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # fused score, 0-1 (higher is better)
    cosine: float  # dense similarity to the question
    dense_rank: int | None  # 1-based rank in each list, None when absent from it
    keyword_rank: int | None


class HybridRetriever:
    """Search one loaded `econlm.rag.store.Index` with the embedder that built it."""

    def __init__(self, index, embedder, candidates: int = 50, keyword_weight: float = KEYWORD_WEIGHT,
                 min_cosine: float = MIN_COSINE, min_keyword_cosine: float = MIN_KEYWORD_COSINE,
                 keyword_index: KeywordIndex | None = None):
        """`keyword_index`: BM25 over these same chunks, when the caller already built it (a benchmark
        searching one set of chunks through an exact and an approximate vector index); else built here."""
        if index.embedder != embedder.name:
            from econlm.errors import UserError

            raise UserError(
                f"index {index.name} was built with embeddings {index.embedder!r}, not {embedder.name!r}; rebuild it"
            )
        self.index = index
        self.embedder = embedder
        self.candidates = candidates
        self.keyword_weight = keyword_weight
        self.min_cosine = min_cosine
        self.min_keyword_cosine = min_keyword_cosine
        self._stop = stop_words()
        if keyword_index is not None and keyword_index.n_chunks != len(index.chunks):
            raise ValueError(f"keyword index of {keyword_index.n_chunks} chunks for an index of {len(index.chunks)}")
        if keyword_index is None:
            keyword_index = KeywordIndex((c.text for c in index.chunks), self._stop)
        self.keyword_index = keyword_index

    def dense(self, query_vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosines, chunk ids) of the n nearest chunks (ids are -1 past the end of a small index)."""
        scores, ids = self.index.faiss_index.search(query_vector.reshape(1, -1).astype(np.float32), n)
        return scores[0], ids[0]

    def keyword(self, query_terms: list[str], n: int) -> list[int]:
        """Chunk ids sharing at least one term with the query, best BM25 score first."""
        return self.keyword_index.top(query_terms, n)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The k best relevant chunks for `query` (possibly fewer, possibly none)."""
        n_chunks = len(self.index.chunks)
        if n_chunks == 0 or not query.strip():
            return []
        query_vector = self.embedder.encode([query])[0]
        n = min(max(self.candidates, k), n_chunks)
        cosines, dense_ids = self.dense(query_vector, n)
        query_terms = tokenize(query, self._stop)
        bm25 = self.keyword_index.scores(query_terms)
        keyword_ids = best_matching(bm25, n)

        dense_rank = {int(i): r for r, i in enumerate(dense_ids, 1) if i >= 0}
        cosine = {int(i): float(c) for c, i in zip(cosines, dense_ids) if i >= 0}
        keyword_rank = {i: r for r, i in enumerate(keyword_ids, 1)}
        keyword_only = [i for i in keyword_ids if i not in cosine]
        if keyword_only:  # their similarity too, from the stored vectors
            stored = self.index.faiss_index.reconstruct_batch(np.asarray(keyword_only, dtype=np.int64))
            cosine.update(zip(keyword_only, (stored @ query_vector).tolist()))
        candidates = list(cosine)
        top_bm25 = max(float(bm25[i]) for i in candidates) or 1.0  # 0 when no chunk shares a term
        top_cosine = max(cosine.values())
        fused = {i: self.keyword_weight * float(bm25[i]) / top_bm25
                 + (1 - self.keyword_weight) * (cosine[i] + 1) / (top_cosine + 1) for i in candidates}
        if not is_vague(query):  # not relevant: neither close in meaning nor sharing a word with a related text
            known = all(t in self.keyword_index.vocabulary for t in query_terms)
            keyword_floor = -1.0 if known else self.min_keyword_cosine
            fused = {i: s for i, s in fused.items() if cosine[i] >= (keyword_floor if bm25[i] > 0 else self.min_cosine)}
        best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return [
            Hit(
                chunk=self.index.chunks[i],
                score=fused[i],
                cosine=cosine[i],
                dense_rank=dense_rank.get(i),
                keyword_rank=keyword_rank.get(i),
            )
            for i in best
        ]
