"""Metric functions against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from econlm import metrics
from econlm.errors import UserError

# Two title pairs. Pair 1 differs in one word; pair 2 drops the first reference word.
PREDICTIONS = ["the cat is on the mat", "growth and inequality"]
REFERENCES = ["the cat sat on the mat", "economic growth and inequality"]


def test_rouge_by_hand():
    # Pair 1: 5 of 6 unigrams shared (P = R = 5/6); bigrams "the cat", "on the", "the mat" shared
    # of 5 each (3/5); LCS "the cat on the mat" = 5 of 6 tokens.
    # Pair 2: all 3 predicted unigrams in the 4-word reference (P = 1, R = 3/4, F = 6/7);
    # bigrams 2 of 2 vs 2 of 3 (F = 4/5); LCS = 3 (F = 6/7).
    scores = metrics.rouge_scores(PREDICTIONS, REFERENCES)
    assert scores["rouge1_f"] == pytest.approx((5 / 6 + 6 / 7) / 2)
    assert scores["rouge2_f"] == pytest.approx((3 / 5 + 4 / 5) / 2)
    assert scores["rougeL_f"] == pytest.approx((5 / 6 + 6 / 7) / 2)


def test_rouge_uses_the_stemmer():
    assert metrics.rouge_scores(["markets"], ["market"])["rouge1_f"] == 1.0


def test_bleu_by_hand():
    # Corpus n-gram matches/totals summed over both pairs:
    #   1-grams (5+3)/(6+3), 2-grams (3+2)/(5+2), 3-grams (1+1)/(4+1), 4-grams 0/(3+0) -> exp
    #   smoothing 1/(2*3); brevity penalty exp(1 - 10/9) (hypothesis 9 words, reference 10).
    expected_corpus = 100 * math.exp(1 - 10 / 9) * (8 / 9 * 5 / 7 * 2 / 5 * 1 / 6) ** 0.25
    # Sentence 1: (5/6 * 3/5 * 1/4 * 1/6)^(1/4), no brevity penalty. Sentence 2 has no 4-grams,
    # so with effective order it is the 3-gram BLEU: all precisions 1, penalty exp(1 - 4/3).
    expected_sentence = ((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25 + math.exp(1 - 4 / 3)) / 2
    scores = metrics.bleu_scores(PREDICTIONS, REFERENCES)
    assert scores["sacrebleu_corpus"] == pytest.approx(expected_corpus)
    assert scores["sentence_bleu_mean"] == pytest.approx(expected_sentence)
    assert "smooth:exp" in scores["sacrebleu_corpus_signature"]
    assert "eff:yes" in scores["sentence_bleu_signature"]


def test_perfect_titles_score_one():
    scores = metrics.title_scores(REFERENCES, REFERENCES)
    assert scores["rouge1_f"] == scores["rougeL_f"] == 1.0
    assert scores["sentence_bleu_mean"] == pytest.approx(1.0)
    assert scores["n"] == 2


def test_classification_by_hand():
    y_true = ["A", "A", "A", "B", "B", "C"]
    y_pred = ["A", "A", "B", "B", "C", "C"]
    scores = metrics.classification_scores(y_true, y_pred, ["A", "B", "C"])
    # Confusion matrix (rows true, columns predicted): A -> [2, 1, 0], B -> [0, 1, 1], C -> [0, 0, 1].
    assert scores["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # Precision A 2/2, B 1/2, C 1/2; recall A 2/3, B 1/2, C 1/1; F1 A 4/5, B 1/2, C 2/3.
    f1 = {"A": 4 / 5, "B": 1 / 2, "C": 2 / 3}
    support = {"A": 3, "B": 2, "C": 1}
    assert scores["per_class"]["A"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 4 / 5, "support": 3})
    assert scores["f1_macro"] == pytest.approx(sum(f1.values()) / 3)
    assert scores["f1_weighted"] == pytest.approx(sum(f1[k] * support[k] for k in f1) / 6)
    assert scores["precision_weighted"] == pytest.approx((3 * 1.0 + 2 * 0.5 + 1 * 0.5) / 6)
    # Weighted recall always equals accuracy.
    assert scores["recall_weighted"] == pytest.approx(4 / 6)
    assert scores["recall_macro"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    scores = metrics.classification_scores(["A", "B"], ["A", "A"], ["A", "B", "C"])
    assert scores["per_class"]["B"]["precision"] == 0.0
    assert scores["per_class"]["C"]["support"] == 0


def test_token_f1_by_hand():
    # Normalised: ["tax", "cut", "raises", "growth"] vs ["tax", "cut", "lowers", "growth", "rate"]:
    # 3 shared -> P 3/4, R 3/5, F1 = 2 * 0.75 * 0.6 / 1.35 = 2/3.
    assert metrics.token_f1("The tax cut raises growth.", "a tax cut lowers growth rate") == pytest.approx(2 / 3)
    assert metrics.token_f1("", "") == 1.0
    assert metrics.token_f1("yes", "no") == 0.0
    qa = metrics.qa_scores(["The answer.", "x"], ["answer", "y"])
    assert qa["exact_match"] == 0.5 and qa["token_f1"] == 0.5


def test_reports_carry_a_primary_metric():
    report = metrics.title_report(PREDICTIONS, REFERENCES, {"seed": 0})
    assert report.primary_metric in report.metrics and report.provenance == {"seed": 0}
    report = metrics.classification_report(["A"], ["A"], ["A", "B"])
    assert report.metrics[report.primary_metric] == 1.0


def test_mismatched_or_empty_inputs_are_user_errors():
    with pytest.raises(UserError, match="2 predictions for 1 references"):
        metrics.rouge_scores(["a", "b"], ["a"])
    with pytest.raises(UserError, match="no predictions"):
        metrics.bleu_scores([], [])


def test_confusion_matrix_png(tmp_path):
    path = metrics.plot_confusion_matrix([[2, 1], [0, 3]], ["A", "B"], tmp_path / "cm.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
