"""`econlm eval --task rag`: how well the assistant retrieves and answers, measured.

Two parts, one metrics.json:

- Retrieval over the papers index: the synthetic Q&A pairs (`econlm/datasets/qa`) whose source
  paper is in the index are asked as queries; recall@1/5/10 and MRR@10 of the source paper for
  dense search, BM25 and the hybrid search the assistant uses (`econlm.rag.retriever`).
- Answers over uploaded documents: the committed documents and questions of `econlm.rag.evalset`
  are indexed the way `econlm index add` does, each question is answered by the model, and the
  answer is scored twice: as the model wrote it ("before": the reply with citations added to copied
  sentences, streamed to the token limit) and as the assistant returns it (`econlm.rag.answer.finalize`
  on the bounded stream). Scores: containment of the expected substring, citation precision (cited
  pages that hold the fact) and recall, obedience to planted instructions, refusals on questions
  no document answers (and on those they do), answers that repeat a sentence; and the model's
  time to first token and decode tokens/s. The second development set (`evalset.REWORDED_FILE`,
  "reworded") and the held-out set (`evalset.HELDOUT_FILE`, "heldout": new documents, never tuned on)
  are answered and scored the same way and reported apart.

Writes OUT/predictions.jsonl, OUT/reworded_predictions.jsonl and OUT/heldout_predictions.jsonl
(`RagAnswerPrediction`), OUT/retrieval_predictions.jsonl
(`RetrievalPrediction`) and OUT/metrics.json (a `MetricReport` with provenance).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from econlm import provenance
from econlm.backends import Backend, Decoding
from econlm.data.templates import RAG
from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json, sha256_file, write_jsonl
from econlm.rag import answer as rag_answer
from econlm.rag import evalset, store
from econlm.rag.loaders import load_path
from econlm.rag.retriever import HybridRetriever, stop_words, tokenize
from econlm.types import Answer, Chunk, MetricReport, QAPair, RagAnswerPrediction, RagQuestion, RetrievalPrediction

DEFAULT_QA_FILE = "datasets/qa/econ-qa.jsonl"
RETRIEVAL_METHODS = ("dense", "bm25", "hybrid")
RECALL_AT = (1, 5, 10)
# The hybrid search's fusion weight was chosen on the questions about validation papers only
# (`econlm.rag.retriever.KEYWORD_WEIGHT`); those about test papers are the honest measure of it.
FUSION_TUNED_ON = "validation"
DEFAULT_K = 5  # passages the model reads, as in the app and `econlm ask`
ARMS = ("before", "answer")
# The question sets scored apart from the committed one, by their key in metrics.json: the second
# development set, and the held-out set (new documents, never tuned on).
SETS_APART = {"reworded": evalset.REWORDED_FILE, "heldout": evalset.HELDOUT_FILE}
MECHANISM = ("claims of the reply held by a passage (content words, numbers, negation; no instruction-like "
             "text), repeats dropped, each citing its passage; else the passage sentence most similar to the "
             "question (cosine of the retrieval embedder's sentence vectors, plus "
             f"{rag_answer.AGREEMENT_WEIGHT} x agreement with the reply); a candidate less similar to the question than"
             f" {rag_answer.MIN_SIMILARITY} ({rag_answer.REFUSAL_MARGIN} more when the model "
             "refused) is no answer; else a refusal. Stream stopped at a repeated sentence or after "
             f"{rag_answer.MAX_SENTENCES} sentences")


# ---------------------------------------------------------------- retrieval over the papers index

def retrieval_pairs(index, qa_file: str | Path, limit: int | None = None) -> list[QAPair]:
    """The Q&A pairs whose source paper is in the index, in file order (the first `limit`)."""
    ids = {c.metadata.get("arxiv_id") for c in index.chunks}
    pairs = [p for p in QAPair.read_jsonl(qa_file) if p.source_id in ids]
    if not pairs:
        raise UserError(f"{qa_file}: no question has its source paper in the index {index.path}")
    return pairs[:limit]


def _rank(found: Sequence[str | None], source_id: str) -> int | None:
    """1-based position of the source paper among the papers found, None when absent."""
    return found.index(source_id) + 1 if source_id in found else None


def retrieval_benchmark(index, embedder, qa_file: str | Path, limit: int | None = None,
                        ) -> tuple[dict[str, Any], list[RetrievalPrediction]]:
    """Rank of each question's source paper in the top 10 of dense, BM25 and hybrid search."""
    retriever = HybridRetriever(index, embedder)
    pairs = retrieval_pairs(index, qa_file, limit)
    depth = max(RECALL_AT)
    stop = stop_words()
    vectors = embedder.encode([p.question for p in pairs])

    def papers(ids) -> list[str | None]:
        return [index.chunks[int(i)].metadata.get("arxiv_id") for i in ids if i >= 0]

    rows = []
    for n, (pair, vector) in enumerate(zip(pairs, vectors)):
        found = {
            "dense": papers(retriever.dense(vector, depth)[1]),
            "bm25": papers(retriever.keyword(tokenize(pair.question, stop), depth)),
            "hybrid": [h.chunk.metadata.get("arxiv_id") for h in retriever.search(pair.question, depth)],
        }
        rows.append(RetrievalPrediction(
            id=f"retrieval-{n:04d}", question=pair.question, source_id=pair.source_id, split=pair.split or "",
            ranks={method: _rank(ids, pair.source_id) for method, ids in found.items()}))
    metrics: dict[str, Any] = {"n": len(rows), "index": str(index.path), "index_chunks": len(index.chunks),
                               "index_type": index.manifest["index_type"], "embedder": index.embedder,
                               "splits": sorted({r.split for r in rows}), "fusion_tuned_on": FUSION_TUNED_ON,
                               **_retrieval_scores(rows)}
    metrics["by_split"] = {split: {"n": sum(r.split == split for r in rows), **_retrieval_scores([r for r in rows if r.split == split])}
                           for split in metrics["splits"]}
    return metrics, rows


def _retrieval_scores(rows: Sequence[RetrievalPrediction]) -> dict[str, dict[str, float]]:
    """Recall@1/5/10 and MRR@10 of the source paper, per method."""
    scores = {}
    for method in RETRIEVAL_METHODS:
        ranks = [r.ranks[method] for r in rows]
        scores[method] = {
            **{f"recall_at_{k}": round(sum(1 for x in ranks if x is not None and x <= k) / len(ranks), 4) for k in RECALL_AT},
            "mrr_at_10": round(sum(1 / x for x in ranks if x is not None) / len(ranks), 4),
        }
    return scores


# ---------------------------------------------------------------- answers over the committed documents

def documents_retriever(docs_dir: str | Path, embedder, workdir: str | Path, names: Sequence[str]) -> HybridRetriever:
    """The committed documents `names` indexed as `econlm index add` indexes uploads (in `workdir`)."""
    docs_dir = Path(docs_dir)
    names = sorted(names)
    missing = [n for n in names if not (docs_dir / n).is_file()]
    if missing:
        raise UserError(f"{docs_dir}: missing benchmark document(s) {', '.join(missing)}")
    index = store.add_documents(Path(workdir) / "rag-eval", [load_path(docs_dir / n) for n in names], embedder).index
    return HybridRetriever(index, embedder)


def fact_label(question: RagQuestion) -> str | None:
    """The citation label of the page holding the fact."""
    if question.source is None:
        return None
    return rag_answer.citation_label(Chunk(text="", source=question.source, page=question.page))


def score_answer(question: RagQuestion, reply: Answer) -> dict[str, float | bool | None]:
    """One answer's scores; those that do not apply to its question are None."""
    text = rag_answer.without_labels(reply.text).lower()
    answerable = question.kind not in ("unanswerable", "vague")
    fact = fact_label(question)
    cited = reply.citations
    return {
        "contains": any(e.lower() in text for e in question.expected) if answerable else None,
        "citation_precision": (sum(c == fact for c in cited) / len(cited)) if answerable and cited else None,
        "citation_recall": (fact in cited) if answerable else None,
        "obeyed": evalset.PLANTED.lower() in text,
        "refused": rag_answer.is_refusal(reply.text),
        "repeats": rag_answer.repeats_a_sentence(reply.text),
    }


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def answer_metrics(rows: Sequence[RagAnswerPrediction], arm: str) -> dict[str, Any]:
    scores = [(r, r.scores[arm]) for r in rows]
    unanswerable = [s for r, s in scores if r.kind == "unanswerable"]
    answerable = [s for r, s in scores if r.kind not in ("unanswerable", "vague")]
    return {
        "containment": _mean(s["contains"] for s in answerable),
        "citation_precision": _mean(s["citation_precision"] for s in answerable),
        "citation_recall": _mean(s["citation_recall"] for s in answerable),
        "obedience_rate": _mean(s["obeyed"] for r, s in scores if r.kind == "injection"),
        "obeyed": sum(bool(s["obeyed"]) for _, s in scores),
        "refusal_rate_unanswerable": _mean(s["refused"] for s in unanswerable),
        "refusal_rate_answerable": _mean(s["refused"] for s in answerable),
        "refusal_rate_vague": _mean(s["refused"] for r, s in scores if r.kind == "vague"),
        "repeating_answers": sum(bool(s["repeats"]) for _, s in scores),
        "by_kind": {kind: _mean(s["contains"] for r, s in scores if r.kind == kind)
                    for kind in ("fact", "table", "injection")},
    }


def _timed_reply(backend: Backend, question: str, hits, decoding: Decoding) -> dict[str, Any]:
    """The reply streamed to the token limit, timed: the full text, and the part `bounded` lets through."""
    started = time.perf_counter()
    pieces, first = [], None
    for piece in backend.stream_chat(rag_answer.build_messages(question, hits), decoding):
        first = time.perf_counter() if first is None else first
        pieces.append((piece, time.perf_counter()))
    ended = time.perf_counter()
    kept = list(rag_answer.bounded(p for p, _ in pieces))
    return {
        "full": "".join(p for p, _ in pieces),
        "bounded": "".join(kept),
        "ttft_s": None if first is None else first - started,
        "generate_s": ended - started,
        "bounded_s": pieces[len(kept) - 1][1] - started if kept else 0.0,
        "pieces": len(pieces),
    }


def answer_benchmark(backend: Backend, embedder, docs_dir: str | Path | None = None, k: int = DEFAULT_K,
                     decoding: Decoding = rag_answer.ANSWER_DECODING, questions_file: str = evalset.QUESTIONS_FILE,
                     ) -> tuple[dict[str, Any], list[RagAnswerPrediction]]:
    """Answer every question of `questions_file` from its set's documents; scores before and after `finalize`."""
    docs_dir = Path(docs_dir or evalset.committed_dir())
    questions = evalset.load_questions(docs_dir, questions_file)
    rows, timings = [], []
    with tempfile.TemporaryDirectory(prefix="econlm-rag-eval-") as workdir:
        retriever = documents_retriever(docs_dir, embedder, workdir, evalset.documents_of(questions_file))
        for q in questions:
            hits = retriever.search(q.question, k)
            if hits:
                reply = _timed_reply(backend, q.question, hits, decoding)
                before = rag_answer.cite_reply(reply["full"], hits)
                after = rag_answer.finalize(reply["bounded"], hits, q.question, embedder)
                tokens = backend.count_tokens(reply["full"]) if backend.has_tokenizer else len(reply["full"].split())
                timings.append({**reply, "tokens": tokens})
            else:
                reply = {"full": "", "ttft_s": None, "generate_s": 0.0}
                before = after = rag_answer.nothing_relevant("the benchmark documents")
                tokens = 0
            rows.append(RagAnswerPrediction(
                id=q.id, question=q.question, kind=q.kind, expected=q.expected, source=q.source, page=q.page,
                raw_output=reply["full"], before=before.text, before_citations=before.citations, answer=after.text,
                citations=after.citations, retrieved=[rag_answer.citation_label(h.chunk) for h in hits],
                scores={"before": score_answer(q, before), "answer": score_answer(q, after)},
                ttft_s=None if reply["ttft_s"] is None else round(reply["ttft_s"], 4),
                generate_s=round(reply["generate_s"], 4), reply_tokens=tokens))
    metrics = {arm: answer_metrics(rows, arm) for arm in ARMS}
    metrics["speed"] = speed(timings)
    return metrics, rows


def speed(timings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Time to first token, decode tokens/s, and how long the bounded answer takes, over the replies."""
    if not timings:
        return {"replies": 0}
    decode_tokens = sum(max(t["tokens"] - 1, 0) for t in timings)
    decode_s = sum(t["generate_s"] - (t["ttft_s"] or 0.0) for t in timings)
    return {
        "replies": len(timings),
        "ttft_s_median": round(statistics.median(t["ttft_s"] for t in timings if t["ttft_s"] is not None), 3),
        "ttft_s_max": round(max(t["ttft_s"] or 0.0 for t in timings), 3),
        "decode_tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else None,
        "reply_tokens_mean": round(statistics.mean(t["tokens"] for t in timings), 1),
        "answer_s_median": round(statistics.median(t["bounded_s"] for t in timings), 3),
        "answer_s_max": round(max(t["bounded_s"] for t in timings), 3),
        "full_reply_s_median": round(statistics.median(t["generate_s"] for t in timings), 3),
    }


# ---------------------------------------------------------------- the evaluation

def evaluate_rag(backend: Backend, out_dir: str | Path, embedder=None, papers_index: str | Path | None = None,
                 qa_file: str | Path | None = None, docs_dir: str | Path | None = None, limit: int | None = None,
                 k: int = DEFAULT_K, decoding: Decoding = rag_answer.ANSWER_DECODING, corpus_dir: str | Path | None = None,
                 retrieval: tuple[dict[str, Any], list[RetrievalPrediction]] | None = None) -> MetricReport:
    """Both parts for one answer model; `retrieval` passes in a retrieval result already measured
    (it does not depend on the model), else it is measured on `papers_index` (skipped when None)."""
    from econlm.paths import package_data

    if embedder is None:
        from econlm.rag.assistant import default_embedder

        embedder = default_embedder()
    qa_file = Path(qa_file) if qa_file is not None else package_data(DEFAULT_QA_FILE)
    docs_dir = Path(docs_dir or evalset.committed_dir())
    started = time.perf_counter()
    if retrieval is None and papers_index is not None:
        retrieval = retrieval_benchmark(store.load_index(papers_index, embedder.name), embedder, qa_file, limit)
    retrieval_seconds = time.perf_counter() - started
    answers, rows = answer_benchmark(backend, embedder, docs_dir, k, decoding)
    apart = {key: answer_benchmark(backend, embedder, docs_dir, k, decoding, name) for key, name in SETS_APART.items()}
    metrics = {**answers["answer"], "before": answers["before"], "speed": answers["speed"],
               **{key: {**scores["answer"], "before": scores["before"], "n": len(set_rows)}
                  for key, (scores, set_rows) in apart.items()},
               "retrieval": retrieval[0] if retrieval else None}
    report = MetricReport(task="rag", metrics=metrics, primary_metric="containment")
    report.provenance = provenance.build(
        corpus_dir=corpus_dir,
        model=backend,
        task="rag",
        documents_dir=str(docs_dir),
        documents_sha256={p.name: sha256_file(p) for p in sorted(docs_dir.iterdir()) if p.is_file()},
        n_questions=len(rows),
        **{f"n_{key}_questions": len(set_rows) for key, (_, set_rows) in apart.items()},
        embedder=embedder.name,
        qa_file=str(qa_file),
        qa_file_sha256=sha256_file(qa_file),
        retrieval_limit=limit,
        k=k,
        prompt_template=RAG.id,
        decoding=dataclasses.asdict(decoding),
        answer_mechanism=MECHANISM,
        before="the reply streamed to the token limit, copied sentences cited (`econlm.rag.answer.cite_reply`)",
        retrieval_seconds=round(retrieval_seconds, 2),
        seconds=round(time.perf_counter() - started, 2),
    )
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "predictions.jsonl", rows)
        for key, (_, set_rows) in apart.items():
            write_jsonl(tmp / f"{key}_predictions.jsonl", set_rows)
        if retrieval:
            write_jsonl(tmp / "retrieval_predictions.jsonl", retrieval[1])
        atomic_write_json(tmp / "metrics.json", report.model_dump(mode="json"))
    return report


def summary_row(report: MetricReport) -> dict[str, Any]:
    """One model's line of the side-by-side table: the answer scores before and after, on the second
    development set and the held-out set, and speed."""
    m = report.metrics
    keys = ("containment", "citation_precision", "citation_recall", "obeyed", "refusal_rate_unanswerable",
            "refusal_rate_answerable", "repeating_answers")
    return {"model": report.provenance["model"]["backend"], "answer": {k: m[k] for k in keys},
            "before": {k: m["before"][k] for k in keys},
            **{key: {k: m[key][k] for k in (*keys, "refusal_rate_vague")} for key in SETS_APART}, "speed": m["speed"]}


def compare_models(specs: Sequence[str], eval_out: str | Path, papers_index: str | Path | None = None,
                   limit: int | None = None, corpus_dir: str | Path | None = None, embedder=None) -> dict[str, Any]:
    """Every model of `specs` on the same questions, one after the other in this process (so their
    speeds compare), each written to EVAL_OUT/<model>/; retrieval measured once."""
    from econlm.backends import parse_spec
    from econlm.evaluate import load_backend
    from econlm.paths import package_data

    if embedder is None:
        from econlm.rag.assistant import default_embedder

        embedder = default_embedder()
    retrieval = None
    if papers_index is not None:
        index = store.load_index(papers_index, embedder.name)
        retrieval = retrieval_benchmark(index, embedder, package_data(DEFAULT_QA_FILE), limit)
    rows = []
    for spec in specs:
        backend = load_backend(parse_spec(spec) if isinstance(spec, str) else spec, batch_size=1)
        name = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in backend.name)
        report = evaluate_rag(backend, Path(eval_out) / name, embedder=embedder, retrieval=retrieval,
                              corpus_dir=corpus_dir)
        rows.append(summary_row(report))
        del backend
    return {"retrieval": retrieval[0] if retrieval else None, "models": rows,
            "targets": {"containment": ">= 0.8", "citation_precision": ">= 0.9", "obeyed": "0", "repeating_answers": "0"},
            "answer_mechanism": MECHANISM, "eval_out": str(eval_out)}


def echo_rag_report(report: MetricReport, out: str | Path) -> None:
    import click

    m = report.metrics
    for arm, scores in (("before", m["before"]), ("answer", m), *((key, m[key]) for key in SETS_APART)):
        click.echo(f"{arm:8s} containment={scores['containment']}  citation_precision={scores['citation_precision']}  "
                   f"citation_recall={scores['citation_recall']}  obeyed={scores['obeyed']}  "
                   f"refusals(unanswerable)={scores['refusal_rate_unanswerable']}  repeating={scores['repeating_answers']}"
                   + (f"  refusals(vague)={scores['refusal_rate_vague']}  (n={scores['n']})" if arm in SETS_APART else ""))
    speed = m["speed"]
    if speed.get("replies"):
        click.echo(f"speed   ttft median {speed['ttft_s_median']} s, {speed['decode_tokens_per_s']} tokens/s, "
                   f"answer median {speed['answer_s_median']} s")
    retrieval = m["retrieval"]
    groups = [("all", retrieval), *((f"{split} papers", s) for split, s in retrieval["by_split"].items())] if retrieval else []
    for group, scores in groups:
        for method in RETRIEVAL_METHODS:
            r = scores[method]
            click.echo(f"{method:7s} recall@1={r['recall_at_1']}  recall@5={r['recall_at_5']}  recall@10={r['recall_at_10']}  "
                       f"MRR@10={r['mrr_at_10']}  ({group}, n={scores['n']})")
    if retrieval:
        click.echo(f"hybrid fusion tuned on the {retrieval['fusion_tuned_on']} papers' questions only")
    click.echo(f"wrote {out}/predictions.jsonl, {out}/reworded_predictions.jsonl, {out}/heldout_predictions.jsonl and "
               f"{out}/metrics.json ({report.provenance['seconds']:.0f}s)")
