"""Q&A evaluation: metrics on hand-computed values, and `econlm qa eval` end to end on a tiny random
LLaMA (test-split pairs only, MMLU included)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from econlm.backends import parse_spec
from econlm.evaluate import load_backend
from econlm.metrics import qa_scores
from econlm.qa.eval import embedding_similarity, evaluate_qa, first_paragraph, load_qa_pairs, similarity_encoder
from econlm.report import write_report
from econlm.types import QAPair
from test_mmlu import write_mmlu
from test_qa_synthesize import make_corpus


def test_qa_metrics_hand_computed():
    predictions = ["emissions fall by 8 percent", "Yes.", "The reserve price."]
    references = ["emissions fall 8 percent after the tax", "No.", "reserve price"]
    scores = qa_scores(predictions, references)
    # 1: SQuAD tokens (articles dropped) share 4 of 5 predicted / 6 reference words: F1 = 8/11.
    #    ROUGE-L (stemmed, articles kept): LCS 4 of 5 / 7 -> F = 2/3.
    # 2: nothing in common. 3: equal after normalisation; ROUGE-L LCS 2 of 3 / 2 -> F = 0.8.
    assert scores["token_f1"] == pytest.approx((8 / 11 + 0 + 1) / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["rougeL_f"] == pytest.approx((2 / 3 + 0 + 0.8) / 3)


def test_first_paragraph():
    assert first_paragraph("\n  Emissions fall.\nBy 8 percent.\n\nAs an AI model ...") == "Emissions fall.\nBy 8 percent."


def test_minilm_cosine_is_one_for_the_same_answer_and_lower_for_another_topic():
    encoder, missing = similarity_encoder()
    assert encoder is not None, missing
    reference = "Emissions fall by 8 percent after the carbon tax increase."
    same = embedding_similarity([reference], [reference], encoder)
    close = embedding_similarity(["Carbon taxes cut emissions by 8 percent."], [reference], encoder)
    far = embedding_similarity(["Reserve prices raise auction revenue."], [reference], encoder)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert far < close < same
    # The mean of the two pairs' cosines, not a cosine of means.
    both = embedding_similarity(["Carbon taxes cut emissions by 8 percent.", "Reserve prices raise auction revenue."],
                                [reference, reference], encoder)
    assert both == pytest.approx((close + far) / 2, abs=1e-6)


def write_pairs(path, corpus):
    rows = [
        QAPair(source_id="2101.00001", question="How do carbon taxes affect emissions in Sweden?",
               answer="Emissions fall by 8 percent.", split="test"),
        QAPair(source_id="2101.00003", question="What do reserve prices do in first-price auctions?",
               answer="They raise revenue.", split="test"),
        QAPair(source_id="2001.00001", question="A train question about trade?", answer="Train answer.", split="train"),
    ]
    QAPair.write_jsonl(path, rows)
    return path


def test_qa_eval_end_to_end(tiny_llama, tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    qa_file = write_pairs(tmp_path / "qa.jsonl", corpus)
    assert [p.source_id for p in load_qa_pairs(qa_file, corpus)] == ["2101.00001", "2101.00003"]

    out = tmp_path / "eval"
    backend = load_backend(parse_spec(str(tiny_llama)), batch_size=2)
    report = evaluate_qa(backend, out, corpus, qa_file, mmlu_dir=write_mmlu(tmp_path / "mmlu"))
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == ["Emissions fall by 8 percent.", "They raise revenue."]
    assert report.metrics["n"] == 2
    assert report.metrics["token_f1"] == pytest.approx(sum(p["token_f1"] for p in predictions) / 2)
    assert report.metrics["mmlu_n"] == 6 and 0 <= report.metrics["mmlu_accuracy"] <= 1
    assert report.provenance["prompt_template"] == "econ-qa@1"
    # The MiniLM cosine is the mean over the answers of the real packaged encoder's cosine.
    encoder, _ = similarity_encoder()
    one_by_one = [embedding_similarity([p["prediction"]], [p["reference"]], encoder) for p in predictions]
    assert report.metrics["minilm_cosine"] == pytest.approx(sum(one_by_one) / 2, abs=1e-5)
    assert "not BERTScore" in report.provenance["minilm_cosine"]
    assert (out / "mmlu.png").stat().st_size > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["primary_metric"] == "token_f1" and saved["metrics"]["mmlu"]["per_subject"]

    # `econlm report` puts the run in its Table 3 (the fine-tuned row pending here).
    report_md = write_report([out], tmp_path / "report").read_text()
    table3 = report_md.split("## Table 3", 1)[1].split("\n## ", 1)[0]
    assert f"{report.metrics['token_f1']:.3f}" in table3 and "ours: pending" in table3

    no_mmlu = evaluate_qa(backend, tmp_path / "eval2", corpus, qa_file, mmlu_dir="")
    assert "mmlu_accuracy" not in no_mmlu.metrics
    assert not (tmp_path / "eval2" / "mmlu_predictions.jsonl").exists()


def test_eval_task_qa_scores_the_committed_test_pairs(tiny_llama, shared_corpus, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "eval", "--task", "qa", "--model", str(tiny_llama), "--corpus",
         str(shared_corpus), "--limit", "3", "--batch-size", "3", "--max-new-tokens", "8", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["task"] == "qa" and saved["metrics"]["n"] == 3
    assert saved["metrics"]["mmlu_n"] > 0 and saved["provenance"]["decoding"]["max_new_tokens"] == 8
    assert saved["provenance"]["qa_file"].endswith("econlm/datasets/qa/econ-qa.jsonl")  # the shipped Q&A set
