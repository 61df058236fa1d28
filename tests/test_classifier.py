"""The econlm classifier: fitted on train + validation only, saved without pickle, scored like eval."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from econlm.classifier import LABELS, StackedClassifier, fit, probabilities, score_split
from econlm.cli import cli
from econlm.errors import UserError
from econlm.types import StackedClassifyPrediction
from tests.conftest import write_small_corpus
from tests.fakes import FakeBackend


class HashedFake(FakeBackend):
    """The fake model, with a content hash the classifier can pin."""

    def __init__(self, content_hash: str = "fake-weights-1") -> None:
        super().__init__()
        self.content_hash = content_hash

    def describe(self) -> dict:
        return {**super().describe(), "hash": self.content_hash}


@pytest.fixture(scope="module")
def corpus(shared_corpus, tmp_path_factory):
    return write_small_corpus(shared_corpus, tmp_path_factory.mktemp("clf-corpus"),
                              {"train": 90, "validation": 30, "test": 15})


@pytest.fixture(scope="module")
def fitted(corpus):
    return fit(HashedFake(), corpus, seed=0, jobs=1, progress=lambda message: None)


def test_fit_records_the_protocol(fitted):
    record = fitted.record
    assert record["fitted"] == {"tfidf_models": "train", "stacker": "validation", "stacker_cv_folds": 5, "seed": 0}
    assert record["validation"]["n"] == 30
    assert record["validation"]["chosen_C"] in [float(c) for c in record["validation"]["cv_accuracy_by_C"]]
    assert set(record["validation"]["accuracy_by_source"]) == {"lm", "logreg", "xgboost"}
    assert record["provenance"]["model"]["hash"] == "fake-weights-1"
    assert "test" in record["provenance"]["data_sha256"]  # hashed for provenance, never read for fitting


def test_save_load_round_trip_without_pickle(fitted, corpus, tmp_path):
    from econlm.data.corpus import load_papers, split_files

    abstracts = [p.abstract for p in load_papers(split_files(corpus)["test"]).papers]
    before = probabilities(fitted, HashedFake(), abstracts)
    fitted.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == [
        ".econlm-output.json", "classifier.json", "tfidf_vocabulary.json", "weights.safetensors", "xgboost.json"]
    loaded = StackedClassifier.load(tmp_path / "clf")
    after = probabilities(loaded, HashedFake(), abstracts)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(after.sum(axis=1), 1.0)


def test_a_different_model_is_refused(fitted):
    with pytest.raises(UserError, match="refit it"):
        probabilities(fitted, HashedFake("other-weights"), ["We estimate a model."])


def test_load_errors_name_the_folder(tmp_path, fitted):
    with pytest.raises(UserError, match="not an econlm classifier"):
        StackedClassifier.load(tmp_path)
    fitted.save(tmp_path / "clf")
    meta = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "clf" / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="classifier format 99"):
        StackedClassifier.load(tmp_path / "clf")


def test_score_split_writes_eval_files(fitted, corpus, tmp_path):
    report = score_split(fitted, HashedFake(), corpus, "test", tmp_path / "run")
    rows = list(StackedClassifyPrediction.read_jsonl(tmp_path / "run" / "predictions.jsonl"))
    assert len(rows) == 15 == report.metrics["n"]
    assert all(set(r.probabilities) == set(LABELS) for r in rows)
    assert all(r.predicted_label == max(r.probabilities, key=r.probabilities.get) for r in rows)
    accuracy = sum(r.label == r.predicted_label for r in rows) / len(rows)
    assert report.metrics["accuracy"] == pytest.approx(accuracy)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["task"] == "classify" and saved["provenance"]["prompting"] == "stacked"
    assert (tmp_path / "run" / "confusion_matrix.png").stat().st_size > 0


def test_validation_too_small_for_cv(shared_corpus, tmp_path):
    corpus = write_small_corpus(shared_corpus, tmp_path / "c", {"train": 30, "validation": 3, "test": 3})
    with pytest.raises(UserError, match="at least 2 validation papers of each category"):
        fit(HashedFake(), corpus, jobs=1, progress=lambda message: None)


def test_cli_fit_then_classify_stdin_and_split(tiny_llama, corpus, tmp_path):
    runner = CliRunner()
    clf = tmp_path / "clf"
    result = runner.invoke(cli, ["classifier", "fit", "--model", f"transformers:{tiny_llama}", "--corpus", str(corpus),
                                 "--out", str(clf)])
    assert result.exit_code == 0, result.output
    assert "validation 5-fold CV accuracy" in result.output
    abstract = "We propose a new estimator for panel data with interactive fixed effects and derive its limit."
    result = runner.invoke(cli, ["classify", "--classifier", str(clf)], input=abstract)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("\t")[0] in LABELS
    shown = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert set(shown) == set(LABELS) and sum(shown.values()) == pytest.approx(1.0, abs=2e-3)
    result = runner.invoke(cli, ["classify", "--classifier", str(clf), "--corpus", str(corpus), "--split", "test",
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]["n"] == 15


@pytest.mark.parametrize("args,stdin,message", [
    (["classify", "--classifier", "{clf}"], "   ", "no abstract"),
    (["classify", "--classifier", "{clf}", "--split", "test"], "", "--split needs --out"),
    (["classify", "--classifier", "{missing}"], "An abstract.", "not an econlm classifier"),
    (["classify", "An abstract.", "--classifier", "{clf}", "--split", "test", "--out", "{out}"], "", "not both"),
])
def test_cli_bad_input_is_one_line_exit_2(args, stdin, message, tmp_path, fitted):
    fitted.save(tmp_path / "clf")
    (tmp_path / "missing").mkdir()
    argv = [a.format(clf=tmp_path / "clf", missing=tmp_path / "missing", out=tmp_path / "out") for a in args]
    result = subprocess.run([sys.executable, "-m", "econlm.cli", *argv], input=stdin, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_app_classify_uses_the_classifier_when_given(fitted):
    from econlm.app import tasks

    abstract = "We study the general equilibrium of an economy with theoretical agents."
    stacked = tasks.classify(HashedFake(), abstract, fitted)
    expected = probabilities(fitted, HashedFake(), [abstract])[0]
    assert list(stacked) == list(LABELS) and list(stacked.values()) == pytest.approx(expected.tolist())
    alone = tasks.classify(HashedFake(), abstract)  # no classifier: the model's own three-way softmax
    assert sum(alone.values()) == pytest.approx(1.0) and alone != stacked
