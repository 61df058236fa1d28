"""The econlm classifier: the language model's label log-probabilities stacked with TF-IDF models.

Why stack: the fine-tuned language model and the TF-IDF classifiers make different mistakes (the
model reads the abstract as language, TF-IDF counts its words), so a small model that weighs
their three-way probabilities beats each of them alone. The protocol keeps test untouched:

- the language model is fixed (fine-tuned on train); its features are the log-softmax of the
  three answers' log-likelihoods under the training prompt (constrained scoring);
- one TF-IDF vectorizer, a logistic regression and an XGBoost model are fitted on train;
- the stacker, a multinomial logistic regression over the nine log-probabilities, is fitted on
  validation only, its regularisation chosen by stratified 5-fold cross-validation on validation;
- test is scored once, by `econlm classify --split test`.

Saved without pickle (untrusted files are never unpickled): `classifier.json` (settings, the
stacker's coefficients, provenance), `tfidf_vocabulary.json` + `weights.safetensors` (idf and the
logistic regression's coefficients) and `xgboost.json` (XGBoost's own JSON model format).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from econlm.errors import UserError

LABELS = ("econ.EM", "econ.GN", "econ.TH")  # the column order of every probability array
SOURCES = ("lm", "logreg", "xgboost")  # feature blocks, three log-probabilities each
CLASSIFIER_FILE = "classifier.json"
FORMAT_VERSION = 1
CV_FOLDS = 5
STACKER_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
TFIDF_SETTINGS = {"sublinear_tf": True, "ngram_range": (1, 2), "min_df": 2, "max_features": 50000,
                  "stop_words": "english"}  # the same vectorizer as the TF-IDF baselines
LOGREG_C = 10.0  # the logistic-regression baseline's C chosen on validation (econlm baselines)
XGBOOST_SETTINGS = {"n_estimators": 200, "learning_rate": 0.1, "tree_method": "hist", "colsample_bytree": 0.3,
                    "max_depth": 4}  # the XGBoost baseline's setting (depth chosen on validation)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def lm_log_probs(backend, abstracts: list[str]) -> np.ndarray:
    """(n, 3) log-probabilities of the three answers under the training classification prompt."""
    from econlm.data.templates import CLASSIFY, LABEL_TO_ANSWER

    conversations = [[m.model_dump() for m in CLASSIFY.prompt(abstract=a)] for a in abstracts]
    scores = backend.score_options(conversations, [LABEL_TO_ANSWER[label] for label in LABELS])
    return log_softmax(np.asarray(scores, dtype=np.float64))


@dataclass
class StackedClassifier:
    """TF-IDF models and a stacker over them and the language model named by `lm_spec`."""

    lm_spec: str  # the engine spec whose label log-probabilities are the "lm" features
    vectorizer: Any  # sklearn TfidfVectorizer (fitted)
    logreg: Any  # sklearn LogisticRegression on the TF-IDF features
    xgboost: Any  # xgboost XGBClassifier on the TF-IDF features
    stacker: Any  # sklearn LogisticRegression over the nine log-probabilities
    record: dict[str, Any]  # how it was fitted (provenance, validation scores), saved in classifier.json

    def features(self, abstracts: list[str], lm: np.ndarray) -> np.ndarray:
        """(n, 9): the language model's, the logistic regression's and XGBoost's log-probabilities."""
        tfidf = self.vectorizer.transform(abstracts)
        blocks = [lm, np.log(np.clip(self.logreg.predict_proba(tfidf), 1e-9, 1.0)),
                  np.log(np.clip(self.xgboost.predict_proba(tfidf), 1e-9, 1.0))]
        return np.hstack(blocks)

    def predict_proba(self, abstracts: list[str], lm: np.ndarray) -> np.ndarray:
        return self.stacker.predict_proba(self.features(abstracts, lm))

    def save(self, out_dir: str | Path) -> Path:
        """Write the classifier folder atomically (JSON and safetensors only)."""
        from safetensors.numpy import save_file

        from econlm.io import atomic_dir, atomic_write_json

        with atomic_dir(out_dir) as tmp:
            vocabulary = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
            atomic_write_json(tmp / "tfidf_vocabulary.json", vocabulary)
            # C order: scikit-learn keeps coef_ in Fortran order, which safetensors would store scrambled.
            arrays = {"idf": self.vectorizer.idf_, "logreg_coef": self.logreg.coef_,
                      "logreg_intercept": self.logreg.intercept_}
            save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()},
                      str(tmp / "weights.safetensors"))
            self.xgboost.save_model(str(tmp / "xgboost.json"))
            atomic_write_json(tmp / CLASSIFIER_FILE, {
                "format_version": FORMAT_VERSION,
                "labels": list(LABELS),
                "sources": list(SOURCES),
                "lm_spec": self.lm_spec,
                "tfidf": {k: list(v) if isinstance(v, tuple) else v for k, v in TFIDF_SETTINGS.items()
                          if k != "max_features"},
                "stacker": {"C": float(self.stacker.C), "coef": self.stacker.coef_.tolist(),
                            "intercept": self.stacker.intercept_.tolist()},
                **self.record,
            })
        return Path(out_dir)

    @classmethod
    def load(cls, folder: str | Path) -> "StackedClassifier":
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from xgboost import XGBClassifier

        folder = Path(folder)
        path = folder / CLASSIFIER_FILE
        if not path.is_file():
            raise UserError(f"{folder}: not an econlm classifier (no {CLASSIFIER_FILE}); "
                            "fit one with `econlm classifier fit`")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION or tuple(meta.get("labels", ())) != LABELS:
            raise UserError(f"{path}: classifier format {meta.get('format_version')} with labels "
                            f"{meta.get('labels')}; this econlm reads format {FORMAT_VERSION} over {list(LABELS)}")
        weights = load_file(str(folder / "weights.safetensors"))
        tfidf = dict(meta["tfidf"], ngram_range=tuple(meta["tfidf"]["ngram_range"]))
        vocabulary = json.loads((folder / "tfidf_vocabulary.json").read_text(encoding="utf-8"))
        vectorizer = TfidfVectorizer(**tfidf, vocabulary=vocabulary)
        vectorizer.idf_ = weights["idf"]
        logreg = _linear_model(LogisticRegression(), weights["logreg_coef"], weights["logreg_intercept"])
        xgboost = XGBClassifier()
        xgboost.load_model(str(folder / "xgboost.json"))
        stacker = _linear_model(LogisticRegression(C=meta["stacker"]["C"]), np.asarray(meta["stacker"]["coef"]),
                                np.asarray(meta["stacker"]["intercept"]))
        record = {k: v for k, v in meta.items()
                  if k not in ("format_version", "labels", "sources", "lm_spec", "tfidf", "stacker")}
        return cls(meta["lm_spec"], vectorizer, logreg, xgboost, stacker, record)


def _linear_model(model, coef: np.ndarray, intercept: np.ndarray):
    """A fitted-looking scikit-learn linear classifier from stored coefficients (no pickle)."""
    model.coef_, model.intercept_ = coef, intercept
    model.classes_ = np.arange(len(LABELS))
    model.n_features_in_ = coef.shape[1]
    return model


def _targets(papers) -> np.ndarray:
    return np.array([LABELS.index(p.primary_category) for p in papers])


def fit(backend, corpus_dir: str | Path, seed: int = 0, jobs: int = 2, progress=print) -> StackedClassifier:
    """Fit the TF-IDF models on train and the stacker on validation (C by stratified k-fold CV there)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from xgboost import XGBClassifier

    from econlm import provenance
    from econlm.data.corpus import load_papers, split_files

    files = split_files(corpus_dir)
    train, validation = load_papers(files["train"]).papers, load_papers(files["validation"]).papers
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(**TFIDF_SETTINGS)
    train_tfidf = vectorizer.fit_transform([p.abstract for p in train])
    y_train = _targets(train)
    logreg = LogisticRegression(C=LOGREG_C, max_iter=3000).fit(train_tfidf, y_train)
    progress(f"logistic regression fitted on {len(train)} train papers")
    xgboost = XGBClassifier(**XGBOOST_SETTINGS, random_state=seed, n_jobs=jobs).fit(train_tfidf, y_train)
    progress(f"XGBoost fitted on {len(train)} train papers")
    abstracts = [p.abstract for p in validation]
    lm = lm_log_probs(backend, abstracts)
    progress(f"{backend.name}: label log-probabilities of {len(validation)} validation papers")
    draft = StackedClassifier(backend.name, vectorizer, logreg, xgboost, None, {})
    features, y_val = draft.features(abstracts, lm), _targets(validation)
    n_folds = min(CV_FOLDS, int(np.bincount(y_val, minlength=len(LABELS)).min()))
    if n_folds < 2:
        raise UserError(f"{files['validation']}: the stacker needs at least 2 validation papers of each category")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    cv = {c: float(cross_val_score(LogisticRegression(C=c, max_iter=2000), features, y_val, cv=folds,
                                   scoring="accuracy").mean()) for c in STACKER_C_GRID}
    best_c = max(STACKER_C_GRID, key=lambda c: (cv[c], -c))  # ties: the stronger regularisation
    draft.stacker = LogisticRegression(C=best_c, max_iter=2000).fit(features, y_val)
    single = {source: float(np.mean(features[:, 3 * i: 3 * i + 3].argmax(axis=1) == y_val))
              for i, source in enumerate(SOURCES)}
    draft.record = {
        "fitted": {"tfidf_models": "train", "stacker": "validation", "stacker_cv_folds": n_folds, "seed": seed},
        "validation": {"n": len(validation), "cv_accuracy_by_C": {str(c): round(v, 4) for c, v in cv.items()},
                       "chosen_C": best_c, "accuracy_by_source": single},
        "provenance": provenance.build(corpus_dir=corpus_dir, model=backend, seed=seed,
                                       seconds=round(time.perf_counter() - started, 1)),
    }
    return draft


def probabilities(classifier: StackedClassifier, backend, abstracts: list[str]) -> np.ndarray:
    """(n, 3) stacked probabilities for abstracts, in LABELS order."""
    check_backend(classifier, backend)
    return classifier.predict_proba(abstracts, lm_log_probs(backend, abstracts))


def fitted_on(classifier: StackedClassifier, backend) -> bool:
    """Whether `backend` runs the model the stacker was fitted on: the same content hash, not just the
    same name (a name such as "econlm" can point at a newer adapter)."""
    return classifier.record["provenance"]["model"].get("hash") == backend.describe().get("hash")


def check_backend(classifier: StackedClassifier, backend) -> None:
    """The stacker's weights fit only the model it was fitted with (`fitted_on`)."""
    if not fitted_on(classifier, backend):
        fitted = classifier.record["provenance"]["model"].get("hash")
        current = backend.describe().get("hash")
        raise UserError(f"this classifier was fitted on the log-probabilities of {classifier.lm_spec} with "
                        f"content hash {str(fitted)[:12]}, but {backend.name} now has {str(current)[:12]}; "
                        "refit it with `econlm classifier fit`")


def score_split(classifier: StackedClassifier, backend, corpus_dir: str | Path, split: str, out_dir: str | Path,
                limit: int | None = None, seed: int = 0):
    """Score a corpus split like `econlm eval --task classify`: predictions.jsonl, metrics.json, confusion matrix."""
    from econlm import provenance
    from econlm.data.templates import LABEL_TO_ANSWER
    from econlm.evaluate import load_split
    from econlm.io import atomic_dir, atomic_write_json, write_jsonl
    from econlm.metrics import classification_report, plot_confusion_matrix
    from econlm.types import StackedClassifyPrediction

    papers = load_split(corpus_dir, split, limit, seed)
    started = time.perf_counter()
    probs = probabilities(classifier, backend, [p.abstract for p in papers])
    seconds = time.perf_counter() - started
    predictions = [
        StackedClassifyPrediction(
            id=f"classify-{paper.arxiv_id}", task="classify", input=paper.abstract,
            reference=LABEL_TO_ANSWER[paper.primary_category], prediction=LABEL_TO_ANSWER[LABELS[int(row.argmax())]],
            label=paper.primary_category, predicted_label=LABELS[int(row.argmax())],
            probabilities={label: round(float(p), 6) for label, p in zip(LABELS, row)},
        )
        for paper, row in zip(papers, probs)
    ]
    report = classification_report([p.label for p in predictions], [p.predicted_label for p in predictions], LABELS)
    report.provenance = provenance.build(
        corpus_dir=corpus_dir, model=backend, seed=seed, task="classify", split=split, n_examples=len(papers),
        limit=limit, classifier={"kind": "stacked", "sources": list(SOURCES), **classifier.record["fitted"],
                                 "chosen_C": classifier.record["validation"]["chosen_C"]},
        prompting="stacked", seconds=round(seconds, 2), examples_per_second=round(len(papers) / seconds, 3))
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "predictions.jsonl", predictions)
        atomic_write_json(tmp / "metrics.json", report.model_dump(mode="json"))
        plot_confusion_matrix(report.metrics["confusion_matrix"], list(LABELS), tmp / "confusion_matrix.png",
                              f"econlm classifier ({backend.name} + TF-IDF), {split} n={len(papers)}")
    return report


def shipped_classifier_dir(adapter: str | None = None) -> Path:
    """The classifier shipped for a shipped adapter (named as `ModelRef.parse` takes it; default: the
    default adapter): it stacks on that adapter's log-probabilities, so its folder under classifiers/
    has the adapter's folder name (it may be absent)."""
    from econlm.models import SHIPPED_ADAPTER_NAME, shipped_adapter_dir
    from econlm.paths import package_data

    return package_data("classifiers") / shipped_adapter_dir(adapter or SHIPPED_ADAPTER_NAME).name
