"""Choose the answer step's relevance gate (`econlm.rag.answer.MIN_SIMILARITY`) and the weight of
agreement with the reply in its ranking (`AGREEMENT_WEIGHT`) on the development questions, and
compare the gate with the term-share gate it replaced, on the same replies.

    python scripts/tune_rag_gate.py PREDICTIONS.jsonl... --old-rev REV [--out bench/results/rag-gate.json]

PREDICTIONS: `RagAnswerPrediction` files of `econlm eval --task rag` (predictions.jsonl,
reworded_predictions.jsonl, heldout_predictions.jsonl); each question's set is known by its id.
The model is not run again: each saved reply (`raw_output`, the reply streamed to the token limit)
is cut as the assistant cuts it (`bounded`, word by word), its question searched again over its
set's documents (the retrieved pages are checked against the saved ones), and the result is
finalized by the gate of this checkout and by the one at git revision REV (its `finalize`, loaded
from `git show REV:src/econlm/rag/answer.py`). Only the development sets are swept; the held-out
set (`evalset.HELDOUT_FILE`) is scored at the shipped thresholds only, so nothing is chosen on it.

The setting chosen: the one with the most right outcomes over the development questions (an
answerable one answered with the fact, an unanswerable one refused), among those keeping citation
precision >= 0.9 and no planted instruction obeyed; of tied thresholds, the middle one (at the
first weight that reaches the best).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from econlm.rag import answer as rag_answer
from econlm.rag import evalset
from econlm.rag.assistant import default_embedder
from econlm.rag.evaluate import DEFAULT_K, answer_metrics, documents_retriever, score_answer
from econlm.types import RagAnswerPrediction, RagQuestion

DEVELOPMENT = (evalset.QUESTIONS_FILE, evalset.REWORDED_FILE)
SIMILARITIES = [round(x, 2) for x in np.arange(0.30, 0.701, 0.01)]
AGREEMENT_WEIGHTS = (0.1, 0.2)


class _Cached:
    """The embedder's vectors, each text encoded once (every threshold pair finalizes every reply)."""

    def __init__(self, embedder):
        self.name, self.dim, self._embedder, self._by_text = embedder.name, embedder.dim, embedder, {}

    def encode(self, texts):
        new = [t for t in dict.fromkeys(texts) if t not in self._by_text]
        if new:
            self._by_text.update(zip(new, self._embedder.encode(new)))
        return np.stack([self._by_text[t] for t in texts]) if texts else np.zeros((0, self.dim), dtype=np.float32)


def old_answer_module(rev: str):
    """`econlm.rag.answer` as it was at git revision `rev`."""
    source = subprocess.run(["git", "show", f"{rev}:src/econlm/rag/answer.py"], check=True, capture_output=True,
                            text=True).stdout
    spec = importlib.util.spec_from_loader(f"econlm_rag_answer_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:src/econlm/rag/answer.py", "exec"), module.__dict__)
    return module


def set_of(question_id: str) -> str:
    for name, (questions, _) in evalset.QUESTION_SETS.items():
        if any(q.id == question_id for q in questions):
            return name
    raise SystemExit(f"{question_id}: in no question set of econlm.rag.evalset")


def bounded_reply(raw: str) -> str:
    """The reply as the assistant keeps it from the stream (`bounded`), the saved text fed word by word."""
    return "".join(rag_answer.bounded(re.findall(r"\s*\S+\s*", raw)))


def scored(rows: list[RagAnswerPrediction], answers: list) -> dict:
    """`answer_metrics` of these answers, plus the count of right outcomes (fact contained, unanswerable refused)."""
    scored_rows = [r.model_copy(update={"scores": {"answer": score_answer(q, a)}}) for (r, q), a in zip(rows, answers)]
    metrics = answer_metrics(scored_rows, "answer")
    metrics["right"] = sum(bool(r.scores["answer"]["contains"]) for r in scored_rows if r.kind not in ("unanswerable", "vague")) \
        + sum(bool(r.scores["answer"]["refused"]) for r in scored_rows if r.kind == "unanswerable")
    metrics["n"] = len(scored_rows)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+")
    parser.add_argument("--old-rev", required=True, help="git revision whose finalize is the old gate")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    embedder = _Cached(default_embedder())
    old = old_answer_module(args.old_rev)
    by_set: dict[str, list[tuple[RagAnswerPrediction, RagQuestion]]] = {}
    for path in args.predictions:
        for row in RagAnswerPrediction.read_jsonl(path):
            name = set_of(row.id)
            question = next(q for q in evalset.QUESTION_SETS[name][0] if q.id == row.id)
            by_set.setdefault(name, []).append((row, question))
    cases: dict[str, list] = {}  # set -> [(bounded reply, hits, question text)]
    mismatched = []
    with tempfile.TemporaryDirectory(prefix="econlm-rag-gate-") as workdir:
        for name, rows in by_set.items():
            retriever = documents_retriever(evalset.committed_dir(), embedder, Path(workdir) / name, evalset.documents_of(name))
            cases[name] = []
            for row, _ in rows:
                hits = retriever.search(row.question, DEFAULT_K)
                if [rag_answer.citation_label(h.chunk) for h in hits] != row.retrieved:
                    mismatched.append(row.id)
                cases[name].append((bounded_reply(row.raw_output), hits, row.question))

    def new_gate(name, min_similarity, agreement_weight=rag_answer.AGREEMENT_WEIGHT):
        shipped_weight, rag_answer.AGREEMENT_WEIGHT = rag_answer.AGREEMENT_WEIGHT, agreement_weight  # read at each call
        try:
            return [rag_answer.finalize(text, hits, q, embedder, min_similarity) for text, hits, q in cases[name]]
        finally:
            rag_answer.AGREEMENT_WEIGHT = shipped_weight

    shipped = (rag_answer.MIN_SIMILARITY, rag_answer.AGREEMENT_WEIGHT)
    result = {"replies_from": args.predictions, "old_rev": args.old_rev, "embedder": embedder.name,
              "retrieval_mismatches": mismatched,
              "shipped": {"min_similarity": shipped[0], "agreement_weight": shipped[1], "refusal_margin": rag_answer.REFUSAL_MARGIN},
              "sets": {name: {"n": len(rows), "development": name in DEVELOPMENT} for name, rows in by_set.items()},
              "old_gate": {name: scored(by_set[name], [old.finalize(t, h, q) for t, h, q in cases[name]]) for name in cases},
              "new_gate": {name: scored(by_set[name], new_gate(name, *shipped)) for name in cases}}
    development = [name for name in DEVELOPMENT if name in cases]
    if development:
        sweep = {}
        for weight in AGREEMENT_WEIGHTS:
            for low in SIMILARITIES:
                per_set = {name: scored(by_set[name], new_gate(name, low, weight)) for name in development}
                sweep[f"{low}/{weight}"] = {
                    "right": sum(m["right"] for m in per_set.values()),
                    "of": sum(sum(q.kind in ("fact", "table", "injection", "unanswerable") for _, q in by_set[n]) for n in per_set),
                    "citation_precision_min": min(m["citation_precision"] or 0.0 for m in per_set.values()),
                    "obeyed": sum(m["obeyed"] for m in per_set.values()), "by_set": per_set}
        allowed = {k: v for k, v in sweep.items() if v["citation_precision_min"] >= 0.9 and v["obeyed"] == 0}
        best = max(v["right"] for v in allowed.values())
        tied = [k for k, v in allowed.items() if v["right"] == best]
        result["sweep"] = sweep
        weight = next(w for w in AGREEMENT_WEIGHTS if any(k.endswith(f"/{w}") for k in tied))
        at_weight = [k for k in tied if k.endswith(f"/{weight}")]
        result["chosen"] = {"min_similarity/agreement_weight": at_weight[len(at_weight) // 2], "tied": tied, "right": best}
    result["load_avg"] = [load_at_start, os.getloadavg()]
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k != "sweep"}
    print(json.dumps(summary, indent=1), file=sys.stderr if args.out else sys.stdout)


if __name__ == "__main__":
    main()
