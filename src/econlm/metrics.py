"""Metrics, named for exactly what they compute, so our numbers are comparable with the study's.

- ROUGE: Google's `rouge-score`, F-measure, `use_stemmer=True`, averaged over examples.
- BLEU: sacreBLEU corpus BLEU (0-100, with its signature), and the mean smoothed sentence BLEU on
  a 0-1 scale (the study's scale; sacreBLEU `exp` smoothing with effective order).
- Classification: accuracy, weighted and macro precision/recall/F1 (scikit-learn,
  zero_division=0), a per-class table and the confusion matrix.
- Q&A: SQuAD-style token F1 and exact match.

Each function returns a plain dict; the `*_report` evaluators wrap one in a `MetricReport` with the
metric that ranks models (`primary_metric`).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from econlm.errors import UserError
from econlm.types import MetricReport

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TITLE_PRIMARY = "rougeL_f"
CLASSIFY_PRIMARY = "accuracy"
QA_PRIMARY = "token_f1"


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise UserError("no predictions to score")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score, Porter stemmer on)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        for kind in ROUGE_TYPES:
            totals[kind] += scores[kind].fmeasure
    return {f"{kind}_f": totals[kind] / len(predictions) for kind in ROUGE_TYPES}


def bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (0-100) with its signature, and mean smoothed sentence BLEU (0-1)."""
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references)
    corpus = BLEU()
    corpus_score = corpus.corpus_score(list(predictions), [list(references)])
    sentence = BLEU(effective_order=True)  # sacreBLEU's recommended setting for single sentences
    sentence_scores = [sentence.sentence_score(p, [r]).score / 100 for p, r in zip(predictions, references)]
    return {
        "sacrebleu_corpus": corpus_score.score,
        "sacrebleu_corpus_signature": str(corpus.get_signature()),
        "sentence_bleu_mean": sum(sentence_scores) / len(sentence_scores),
        "sentence_bleu_signature": str(sentence.get_signature()),
    }


def title_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    return {**rouge_scores(predictions, references), **bleu_scores(predictions, references), "n": len(predictions)}


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted and macro P/R/F1, per-class P/R/F1/support, confusion matrix (rows = true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    _check_pairs(y_pred, y_true)
    labels = list(labels)
    result: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred)), "n": len(y_true)}
    for average in ("weighted", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        result.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    result["per_class"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    result["labels"] = labels
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return result


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _normalize_answer(text: str) -> list[str]:
    """SQuAD normalisation: lower case, no punctuation or articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 between one answer and its reference."""
    pred, ref = _normalize_answer(prediction), _normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean SQuAD token F1 and exact match (after normalisation), plus ROUGE-L."""
    _check_pairs(predictions, references)
    f1 = [token_f1(p, r) for p, r in zip(predictions, references)]
    exact = [float(_normalize_answer(p) == _normalize_answer(r)) for p, r in zip(predictions, references)]
    return {
        "token_f1": sum(f1) / len(f1),
        "exact_match": sum(exact) / len(exact),
        "rougeL_f": rouge_scores(predictions, references)["rougeL_f"],
        "n": len(predictions),
    }


def title_report(predictions: Sequence[str], references: Sequence[str], provenance: dict | None = None) -> MetricReport:
    return MetricReport(task="title", metrics=title_scores(predictions, references), primary_metric=TITLE_PRIMARY,
                        provenance=provenance or {})


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str],
                          provenance: dict | None = None) -> MetricReport:
    return MetricReport(task="classify", metrics=classification_scores(y_true, y_pred, labels),
                        primary_metric=CLASSIFY_PRIMARY, provenance=provenance or {})


def qa_report(predictions: Sequence[str], references: Sequence[str], provenance: dict | None = None) -> MetricReport:
    return MetricReport(task="qa", metrics=qa_scores(predictions, references), primary_metric=QA_PRIMARY,
                        provenance=provenance or {})


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: the honest error bar on a few hundred papers or ~80 questions."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap(correct_a: Sequence[bool], correct_b: Sequence[bool], resamples: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same examples, with a 95% percentile interval from a
    paired bootstrap (scipy.stats.bootstrap resamples the examples, keeping each pair together)."""
    import numpy as np
    from scipy.stats import bootstrap

    _check_pairs(list(correct_a), list(correct_b))
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    result = bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
                       vectorized=True, n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    return {"difference": float(a.mean() - b.mean()), "ci95": [float(result.confidence_interval.low),
                                                                float(result.confidence_interval.high)],
            "n": len(a), "resamples": resamples, "seed": seed}


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str) -> Path:
    """A labelled confusion-matrix heatmap (counts in the cells), written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from econlm.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
