"""`econlm classify` (an abstract, or a corpus split) and `econlm classifier fit`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from econlm.cli._base import ModelSpecParam, corpus_option, main, resolve_corpus


def _load(classifier_dir: Path | None):
    from econlm.backends import get_backend
    from econlm.classifier import StackedClassifier, shipped_classifier_dir

    classifier = StackedClassifier.load(classifier_dir or shipped_classifier_dir())
    return classifier, get_backend(classifier.lm_spec, batch_size=16)


@main.command("classify")
@click.argument("abstract", required=False)
@corpus_option
@click.option("--split", default=None, help="Score a corpus split (e.g. test) instead of one abstract; needs --out.")
@click.option("--limit", type=int, default=None, help="With --split: a seeded random subset of N papers.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --limit subset.")
@click.option("--classifier", "classifier_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder written by `econlm classifier fit` [default: the shipped econlm classifier].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --split: output directory (predictions.jsonl, metrics.json, confusion_matrix.png).")
def classify(abstract, corpus, split, limit, seed, classifier_dir, out):
    """Classify an abstract into econ.EM / econ.GN / econ.TH with the econlm classifier.

    The abstract is the argument, or stdin when none is given (or '-'); prints the category and
    its three probabilities. With --split, reads CORPUS/<split>.jsonl and writes the same files
    as `econlm eval --task classify` to OUT. The classifier stacks the language model's label
    log-probabilities with TF-IDF logistic regression and XGBoost (see econlm.classifier).
    """
    from econlm.errors import UserError
    from econlm.types import CATEGORIES, normalize_ws

    if split is not None:
        if abstract is not None:
            raise UserError("give either an abstract or --split, not both")
        if out is None:
            raise UserError("--split needs --out DIR")
        from econlm.classifier import score_split
        from econlm.io import check_out_dir

        check_out_dir(out)  # before the classifier and its model load
        classifier, backend = _load(classifier_dir)
        report = score_split(classifier, backend, resolve_corpus(corpus), split, out, limit=limit, seed=seed)
        m = report.metrics
        click.echo(f"accuracy {m['accuracy']:.3f}  weighted F1 {m['f1_weighted']:.3f}  n={m['n']}  -> {out}")
        return
    if abstract is None or abstract == "-":
        abstract = sys.stdin.read()
    abstract = normalize_ws(abstract)
    if not abstract:
        raise UserError("no abstract: pass it as an argument or on stdin")
    from econlm.classifier import LABELS, probabilities

    classifier, backend = _load(classifier_dir)
    row = probabilities(classifier, backend, [abstract])[0]
    best = LABELS[int(row.argmax())]
    click.echo(f"{best}\t{CATEGORIES[best]}")
    for label, p in zip(LABELS, row):
        click.echo(f"  {label}  {p:.3f}  {CATEGORIES[label]}")


@main.group("classifier")
def classifier_group() -> None:
    """Fit the econlm classifier (language model + TF-IDF models, stacked on validation)."""


@classifier_group.command("fit")
@corpus_option
@click.option("--model", "spec", type=ModelSpecParam(), default="econlm", show_default=True,
              help="ENGINE:MODEL whose label log-probabilities are stacked (a fine-tuned econlm model).")
@click.option("--seed", default=0, show_default=True, help="Seed of XGBoost and the cross-validation folds.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Classifier folder to write.")
def classifier_fit(corpus, spec, seed, out):
    """Fit TF-IDF logistic regression and XGBoost on CORPUS/train.jsonl, then the stacker over them and
    the model's label log-probabilities on CORPUS/validation.jsonl (C by 5-fold CV); test is not read.
    Writes OUT/classifier.json, tfidf_vocabulary.json, weights.safetensors and xgboost.json (no pickle)."""
    from econlm.backends import get_backend
    from econlm.classifier import fit

    backend = get_backend(spec, batch_size=16)
    classifier = fit(backend, resolve_corpus(corpus), seed=seed, progress=lambda m: click.echo(m, err=True))
    classifier.save(out)
    v = classifier.record["validation"]
    click.echo(f"validation 5-fold CV accuracy {v['cv_accuracy_by_C'][str(v['chosen_C'])]:.3f} (C={v['chosen_C']}); "
               f"single sources: " + ", ".join(f"{k} {a:.3f}" for k, a in v["accuracy_by_source"].items()) + f" -> {out}")
