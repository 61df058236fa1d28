"""Choose the hybrid search's BM25 weight (`econlm.rag.retriever.KEYWORD_WEIGHT`) on the retrieval
benchmark's questions about validation papers only; those about test papers are never searched
here, so `econlm eval --task rag` can report them as the held-out measure.

    python scripts/tune_rag_fusion.py PAPERS_INDEX [--out bench/results/rag-fusion.json]

PAPERS_INDEX: `econlm index build --splits test,validation --out DIR`. Each question is embedded
once; every weight then runs the real `HybridRetriever.search` (floors included) and is scored by
recall@1/5/10 and MRR@10 of the source paper, beside dense search and BM25 alone.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from econlm.paths import package_data
from econlm.rag import store
from econlm.rag.assistant import default_embedder
from econlm.rag.evaluate import DEFAULT_QA_FILE, FUSION_TUNED_ON, RECALL_AT, retrieval_pairs
from econlm.rag.retriever import HybridRetriever, stop_words, tokenize

WEIGHTS = [round(w, 2) for w in np.arange(0.0, 1.001, 0.05)]


class _Cached:
    """The embedder's vectors for these questions, computed once (the sweep searches each many times)."""

    def __init__(self, embedder, texts):
        self.name, self.dim = embedder.name, embedder.dim
        self._by_text = dict(zip(texts, embedder.encode(texts)))

    def encode(self, texts):
        return np.stack([self._by_text[t] for t in texts])


def scores(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    return {**{f"recall_at_{k}": round(sum(1 for r in ranks if r is not None and r <= k) / n, 4) for k in RECALL_AT},
            "mrr_at_10": round(sum(1 / r for r in ranks if r is not None) / n, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    embedder = default_embedder()
    index = store.load_index(args.index, embedder.name)
    pairs = [p for p in retrieval_pairs(index, package_data(DEFAULT_QA_FILE)) if p.split == FUSION_TUNED_ON]
    cached = _Cached(embedder, [p.question for p in pairs])
    papers = [c.metadata.get("arxiv_id") for c in index.chunks]
    depth = max(RECALL_AT)

    def rank(found: list[str | None], source: str) -> int | None:
        return found.index(source) + 1 if source in found else None

    base = HybridRetriever(index, cached)
    stop = stop_words()
    result = {"questions": len(pairs), "split": FUSION_TUNED_ON, "index": str(args.index),
              "dense": scores([rank([papers[i] for i in base.dense(cached.encode([p.question])[0], depth)[1] if i >= 0],
                                    p.source_id) for p in pairs]),
              "bm25": scores([rank([papers[i] for i in base.keyword(tokenize(p.question, stop), depth)], p.source_id)
                              for p in pairs]),
              "hybrid": {}}
    for weight in WEIGHTS:
        retriever = HybridRetriever(index, cached, keyword_weight=weight, keyword_index=base.keyword_index)
        result["hybrid"][str(weight)] = scores(
            [rank([h.chunk.metadata.get("arxiv_id") for h in retriever.search(p.question, depth)], p.source_id)
             for p in pairs])
    result["load_avg"] = [load_at_start, os.getloadavg()]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
