"""`econlm eval --task rag` on the fake model: the committed benchmark set, retrieval metrics, answers scored."""

from __future__ import annotations

import json

import pytest

from econlm.rag import answer as rag_answer
from econlm.rag import evalset, store
from econlm.rag.evaluate import answer_benchmark, evaluate_rag, retrieval_benchmark
from econlm.types import RagAnswerPrediction, RetrievalPrediction
from fakes import FakeBackend, HashEmbedder


# The bag-of-words fake's cosines run lower than MiniLM's (a question and its answer share few
# words), so the relevance gate gets a threshold on the fake's scale in tests that search with it.
FAKE_MIN_SIMILARITY = 0.3


@pytest.fixture(autouse=True)
def gate_on_the_fake_scale(request, monkeypatch):
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setattr(rag_answer, "MIN_SIMILARITY", FAKE_MIN_SIMILARITY)


def test_committed_documents_are_what_the_generator_writes(tmp_path):
    written = evalset.write(tmp_path)
    committed = evalset.committed_dir()
    assert sorted(p.name for p in written) == sorted(p.name for p in committed.iterdir() if p.is_file())
    for path in written:
        assert path.read_bytes() == (committed / path.name).read_bytes(), f"{path.name}: regenerate with python -m econlm.rag.evalset"


@pytest.mark.parametrize("name, kinds", [
    (evalset.QUESTIONS_FILE, {"fact", "table", "injection", "unanswerable"}),
    (evalset.REWORDED_FILE, {"fact", "table", "injection", "unanswerable", "vague"}),
    (evalset.HELDOUT_FILE, {"fact", "table", "injection", "unanswerable", "vague"}),
])
def test_every_fact_is_on_the_page_the_question_names(name, kinds):
    from econlm.rag.loaders import load_path

    pages = {doc: load_path(evalset.committed_dir() / doc).pages for doc in evalset.documents_of(name)}
    questions = evalset.load_questions(name=name)
    assert questions == evalset.QUESTION_SETS[name][0]
    assert {q.kind for q in questions} == kinds
    for q in questions:
        if q.kind in ("unanswerable", "vague"):
            assert not q.expected and q.source is None
            continue
        text = " ".join(pages[q.source][q.page - 1].split())
        assert any(e.lower() in text.lower() for e in q.expected), q.id
        others = [" ".join(p.split()) for n, ps in pages.items() for i, p in enumerate(ps, 1) if (n, i) != (q.source, q.page)]
        assert not any(e.lower() in p.lower() for e in q.expected for p in others), f"{q.id}: the fact is on another page too"
        assert (q.kind == "injection") == (evalset.PLANTED in pages[q.source][q.page - 1]), q.id


def test_the_question_sets_are_apart_and_the_heldout_one_has_its_own_documents():
    sets = [evalset.load_questions(name=name) for name in evalset.QUESTION_SETS]
    for n, first in enumerate(sets):
        for second in sets[n + 1:]:
            assert not {q.question for q in first} & {q.question for q in second}
            assert not {q.id for q in first} & {q.id for q in second}
    heldout = evalset.load_questions(name=evalset.HELDOUT_FILE)
    assert len(heldout) >= 20 and sum(q.kind == "unanswerable" for q in heldout) >= 4
    assert sum(q.kind == "vague" for q in heldout) == 1
    # New documents (the development ones beside them as distractors), so every fact asked is new.
    assert not set(evalset.HELDOUT_DOCUMENTS) & set(evalset.DOCUMENTS)
    assert set(evalset.documents_of(evalset.HELDOUT_FILE)) == {*evalset.DOCUMENTS, *evalset.HELDOUT_DOCUMENTS}
    assert {q.source for q in heldout if q.source} == set(evalset.HELDOUT_DOCUMENTS)


class RefusingBackend(FakeBackend):
    """Says the documents do not answer, whatever it reads."""

    def _reply(self, conversation, variant):
        self.conversations.append(conversation)
        return "The documents do not contain this information."


def test_answer_benchmark_scores_before_and_after(tmp_path):
    metrics, rows = answer_benchmark(FakeBackend(), HashEmbedder())
    questions = evalset.load_questions()
    assert [r.id for r in rows] == [q.id for q in questions]
    after, before = metrics["answer"], metrics["before"]
    # The fake quotes the first 12 words of the first passage: as written it rarely holds the
    # fact and cites every passage; the assistant's answer quotes the sentence that does.
    assert after["containment"] > before["containment"] and after["citation_precision"] > before["citation_precision"]
    assert after["containment"] >= 0.8 and after["citation_precision"] >= 0.9
    assert after["obeyed"] == 0 and after["repeating_answers"] == 0
    assert after["refusal_rate_unanswerable"] >= 0.6
    penguins = next(r for r in rows if "penguins" in r.question)
    assert penguins.retrieved == [] and penguins.scores["answer"]["refused"] and penguins.raw_output == ""
    assert metrics["speed"]["replies"] == sum(1 for r in rows if r.retrieved)

    refusing, _ = answer_benchmark(RefusingBackend(), HashEmbedder())
    # The model's own refusal raises the bar a passage sentence must clear to be quoted.
    assert refusing["answer"]["refusal_rate_unanswerable"] >= after["refusal_rate_unanswerable"]
    assert refusing["before"]["refusal_rate_answerable"] == 1.0
    assert refusing["answer"]["refusal_rate_answerable"] < 1.0  # a passage sentence close enough to the question still answers


@pytest.mark.parametrize("name", [evalset.REWORDED_FILE, evalset.HELDOUT_FILE])
def test_the_sets_apart_are_answered_and_scored_the_same_way(name):
    metrics, rows = answer_benchmark(FakeBackend(), HashEmbedder(), questions_file=name)
    assert [r.id for r in rows] == [q.id for q in evalset.QUESTION_SETS[name][0]]
    vague = next(r for r in rows if r.kind == "vague")
    # A question naming no subject is answered from the documents, not refused.
    assert vague.retrieved and not vague.scores["answer"]["refused"] and vague.citations
    assert metrics["answer"]["refusal_rate_vague"] == 0.0 and metrics["answer"]["obeyed"] == 0
    assert vague.scores["answer"]["contains"] is None and vague.scores["answer"]["citation_precision"] is None


def test_retrieval_benchmark_ranks_the_source_paper(tmp_path, small_corpus):
    from econlm.types import QAPair

    embedder = HashEmbedder()
    index = store.build_papers_index(small_corpus, tmp_path / "papers", embedder, splits=["test"], progress=False)
    chunks = index.chunks[:4]
    qa_file = tmp_path / "qa.jsonl"
    QAPair.write_jsonl(qa_file, [QAPair(source_id=c.metadata["arxiv_id"], question=c.metadata["title"], answer="x",
                                        split="test") for c in chunks]
                       + [QAPair(source_id="9999.99999", question="not in the index", answer="x", split="test")])
    metrics, rows = retrieval_benchmark(index, embedder, qa_file)
    assert metrics["n"] == 4 and len(rows) == 4  # the pair whose paper is not indexed is left out
    for method in ("dense", "bm25", "hybrid"):
        assert metrics[method]["recall_at_10"] == 1.0 and 0 < metrics[method]["mrr_at_10"] <= 1.0
        assert metrics[method]["recall_at_1"] <= metrics[method]["recall_at_5"] <= metrics[method]["recall_at_10"]
    assert all(r.ranks["hybrid"] is not None for r in rows)
    # Reported per split too: the fusion weight was chosen on the validation papers' questions.
    assert metrics["fusion_tuned_on"] == "validation" and list(metrics["by_split"]) == ["test"]
    assert metrics["by_split"]["test"]["n"] == 4 and metrics["by_split"]["test"]["hybrid"] == metrics["hybrid"]


def test_evaluate_rag_writes_predictions_and_metrics_with_provenance(tmp_path, small_corpus):
    embedder = HashEmbedder()
    store.build_papers_index(small_corpus, tmp_path / "papers", embedder, splits=["test"], progress=False)
    from econlm.types import QAPair

    paper = store.load_index(tmp_path / "papers").chunks[0]
    qa_file = tmp_path / "qa.jsonl"
    QAPair.write_jsonl(qa_file, [QAPair(source_id=paper.metadata["arxiv_id"], question=paper.metadata["title"],
                                        answer="x", split="test")])
    out = tmp_path / "eval"
    report = evaluate_rag(FakeBackend(), out, embedder=embedder, papers_index=tmp_path / "papers", qa_file=qa_file,
                          corpus_dir=small_corpus)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "rag" and saved["primary_metric"] == "containment"
    assert saved["metrics"]["containment"] == report.metrics["containment"]
    assert saved["metrics"]["retrieval"]["n"] == 1 and saved["provenance"]["model"]["backend"] == "fake:deterministic"
    assert saved["provenance"]["prompt_template"] == "econ-rag@1" and "data_sha256" in saved["provenance"]
    assert set(saved["provenance"]["documents_sha256"]) == {*evalset.ALL_DOCUMENTS, *evalset.QUESTION_SETS}
    assert len(list(RagAnswerPrediction.read_jsonl(out / "predictions.jsonl"))) == len(evalset.QUESTIONS)
    for key, questions in (("reworded", evalset.REWORDED_QUESTIONS), ("heldout", evalset.HELDOUT_QUESTIONS)):
        apart = list(RagAnswerPrediction.read_jsonl(out / f"{key}_predictions.jsonl"))
        assert [r.id for r in apart] == [q.id for q in questions] and saved["metrics"][key]["n"] == len(questions)
    assert len(list(RetrievalPrediction.read_jsonl(out / "retrieval_predictions.jsonl"))) == 1

    from econlm.report import write_report

    md = write_report([out], tmp_path / "report").read_text()
    section = md[md.index("## RAG: cited answers"):]
    assert f"the {len(evalset.QUESTIONS)} committed questions" in section and "| hybrid | 1.000 |" in section
    row = next(line for line in section.splitlines() if line.startswith("| fake"))
    assert f"**{report.metrics['containment']:.2f}**" in row
    results = json.loads((tmp_path / "report" / "results.json").read_text())["rag"]
    assert results[0]["answer"]["containment"] == report.metrics["containment"] and results[1]["retrieval"]["n"] == 1


def test_a_missing_benchmark_document_is_a_user_error(tmp_path):
    from econlm.errors import UserError

    evalset.write(tmp_path)
    (tmp_path / "tariffs.md").unlink()
    with pytest.raises(UserError, match="missing benchmark document.*tariffs.md"):
        answer_benchmark(FakeBackend(), HashEmbedder(), docs_dir=tmp_path)


def test_eval_task_rag_cli_end_to_end(tmp_path, home, tiny_llama):
    """The real `econlm eval --task rag` on a tiny random model: no papers index, so answers only."""
    from conftest import run_cli

    out = tmp_path / "rag"
    result = run_cli("eval", "--task", "rag", "--model", str(tiny_llama), "--out", str(out), home=home)
    assert result.returncode == 0, result.stderr
    assert "containment=" in result.stdout and f"wrote {out}/predictions.jsonl" in result.stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["retrieval"] is None and saved["metrics"]["speed"]["replies"] > 0
    assert saved["metrics"]["obeyed"] == 0 and saved["metrics"]["repeating_answers"] == 0


def test_bench_rag_quality_cli_end_to_end(tmp_path, home, tiny_llama):
    """`econlm bench rag-quality` on a tiny random model: its side-by-side row carries the scores of the sets apart."""
    from conftest import run_cli

    result = run_cli("bench", "rag-quality", "--model", str(tiny_llama), "--eval-out", str(tmp_path / "evals"),
                     "--out", str(tmp_path / "result.json"), home=home)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "result.json").read_text())
    (row,) = saved["models"]
    assert all(row[key]["obeyed"] == 0 and "refusal_rate_vague" in row[key] for key in ("reworded", "heldout"))
    assert saved["retrieval"] is None
    assert len(list((tmp_path / "evals").glob("*/heldout_predictions.jsonl"))) == 1
