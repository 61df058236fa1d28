"""Baselines: the scikit-learn estimator contract, the neural classifiers learn, and the harness runs
end to end on a small real corpus with metrics that match its own predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from econlm import baselines
from econlm.errors import UserError
from econlm.metrics import classification_scores

# A toy problem a word-level model must solve: the label is carried by one word.
TOY_TEXTS = [f"{word} is what this note says about {filler}" for word in ("supply", "demand") for filler in
             ("prices", "goods", "firms", "markets", "labor", "trade", "taxes", "money")]
TOY_LABELS = [0] * 8 + [1] * 8


def test_torch_classifier_follows_the_estimator_contract():
    estimator = baselines.TorchTextClassifier("rnn", embedding_dim=8, hidden_size=8, epochs=1)
    assert estimator.get_params()["cell"] == "rnn"
    fitted = estimator.fit(TOY_TEXTS, TOY_LABELS)
    assert fitted is estimator
    check_is_fitted(estimator, ["classes_", "module_", "vocabulary_"])
    fresh = clone(estimator)
    assert fresh.get_params() == estimator.get_params()
    assert not hasattr(fresh, "module_")
    assert estimator.predict_proba(TOY_TEXTS).shape == (16, 2)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_recurrent_classifier_learns_a_word_rule(cell):
    estimator = baselines.TorchTextClassifier(cell, embedding_dim=16, hidden_size=16, epochs=25, batch_size=8, lr=1e-2)
    estimator.fit(TOY_TEXTS, TOY_LABELS)
    assert list(estimator.predict(["demand is what this note says about wages"])) == [1]
    assert (estimator.predict(TOY_TEXTS) == np.array(TOY_LABELS)).all()


def test_best_validation_epoch_is_kept():
    estimator = baselines.TorchTextClassifier("lstm", embedding_dim=8, hidden_size=8, epochs=4, batch_size=8)
    estimator.fit(TOY_TEXTS, TOY_LABELS, eval_set=(TOY_TEXTS, TOY_LABELS))
    scores = [h["validation_f1_weighted"] for h in estimator.history_]
    assert len(scores) == 4
    assert estimator.best_epoch_ == 1 + scores.index(max(scores))


def test_unknown_cell_is_a_user_error():
    with pytest.raises(UserError, match="unknown cell"):
        baselines.TorchTextClassifier("gru").fit(TOY_TEXTS, TOY_LABELS)


def test_harness_end_to_end_on_a_small_corpus(small_corpus, tmp_path):
    settings = baselines.BaselineSettings(names=("logreg", "decision_tree", "rnn"), rnn_epochs=2)
    summary = baselines.run_baselines(small_corpus, tmp_path / "out", settings)
    assert set(summary["baselines"]) == {"logreg", "decision_tree", "rnn"}
    for name in settings.names:
        folder = tmp_path / "out" / name
        report = json.loads((folder / "metrics.json").read_text())
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == 12 and {"id", "input", "reference", "prediction"} <= set(rows[0])
        # The metrics are those of the predictions written beside them.
        again = classification_scores([r["label"] for r in rows], [r["predicted_label"] for r in rows],
                                      ["econ.EM", "econ.GN", "econ.TH"])
        assert report["metrics"]["accuracy"] == pytest.approx(again["accuracy"])
        assert report["metrics"]["confusion_matrix"] == again["confusion_matrix"]
        assert report["provenance"]["n_train"] == 30 and report["provenance"]["n_validation"] == 12
        assert (folder / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # Logistic regression tried its whole grid on validation and kept the best candidate.
    logreg = json.loads((tmp_path / "out" / "logreg" / "metrics.json").read_text())["provenance"]
    assert len(logreg["candidates"]) == 3
    assert logreg["validation_f1_weighted"] == max(c["validation_f1_weighted"] for c in logreg["candidates"])
    assert (tmp_path / "out" / "baselines.png").is_file()


def test_unknown_baseline_is_a_user_error(small_corpus, tmp_path):
    with pytest.raises(UserError, match="unknown baseline"):
        baselines.run_baselines(small_corpus, tmp_path, baselines.BaselineSettings(names=("bert",)))


@pytest.mark.slow
def test_minilm_classifier_fine_tunes_on_a_small_corpus(small_corpus, tmp_path):
    settings = baselines.BaselineSettings(names=("minilm",), minilm_epochs=1, minilm_max_len=64)
    summary = baselines.run_baselines(small_corpus, tmp_path / "out", settings)
    row = summary["baselines"]["minilm"]
    assert 0.0 <= row["accuracy"] <= 1.0
    metrics = json.loads((tmp_path / "out" / "minilm" / "metrics.json").read_text())
    assert metrics["provenance"]["best_epoch"] == 1
