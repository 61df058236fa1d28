"""Evaluate a model on economics Q&A: answers to the test-split questions of the synthesized Q&A
file (closed book, the training prompt), and MMLU-econ multiple choice (`econlm.qa.mmlu`).

Writes OUT/predictions.jsonl (question, reference, prediction, token F1), OUT/mmlu_predictions.jsonl,
OUT/metrics.json (a `MetricReport`: token F1 and exact match (SQuAD normalisation), ROUGE-L F
(rouge-score, stemmer), `minilm_cosine` (below), `mmlu_*` accuracies with 95% intervals, provenance)
and OUT/mmlu.png.

The study scored answers with BERTScore; its stand-in here is `minilm_cosine`, the mean cosine
similarity of each answer's and its reference's sentence embeddings by the packaged encoder
(all-MiniLM-L6-v2, the one retrieval uses): one vector per text, no token alignment, no
roberta-large, so its values are not comparable with BERTScore's. Without the encoder installed
(the `rag` extra) it is None and the provenance says why.

Only pairs whose source paper is in the corpus split are used, so train pairs never score a model.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

from econlm import provenance
from econlm.backends import Backend, Decoding
from econlm.data.corpus import load_papers, split_files
from econlm.data.templates import QA
from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json, sha256_file, write_jsonl
from econlm.metrics import qa_report, token_f1
from econlm.paths import package_data
from econlm.qa.mmlu import N_SHOTS, default_mmlu_dir, evaluate_mmlu
from econlm.types import MetricReport, QAPair, QAPrediction

DEFAULT_QA_FILE = package_data("datasets/qa/econ-qa.jsonl")  # the shipped Q&A set
SIMILARITY_DEFINITION = ("mean cosine similarity of the answer's and the reference's all-MiniLM-L6-v2 sentence "
                         "embeddings (one vector per text; not BERTScore, which aligns roberta-large token embeddings)")
# Reference answers are at most 60 words (the synthesis filter), about 80 SmolLM2 tokens.
QA_DECODING = Decoding(max_new_tokens=96)


def load_qa_pairs(qa_file: str | Path, corpus_dir: str | Path, split: str = "test", limit: int | None = None,
                  seed: int = 0) -> list[QAPair]:
    """The pairs whose source paper is in the corpus split; with `limit`, a seeded subset in file order."""
    ids = {p.arxiv_id for p in load_papers(split_files(corpus_dir)[split]).papers}
    pairs = [p for p in QAPair.read_jsonl(qa_file) if p.source_id in ids]
    if not pairs:
        raise UserError(f"{qa_file}: no question-answer pairs for {split} papers of {corpus_dir}")
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = [pairs[i] for i in keep]
    return pairs


def first_paragraph(text: str) -> str:
    """The answer: the reply up to its first blank line (both models are cut the same way)."""
    return text.strip().split("\n\n", 1)[0].strip()


def answer_questions(backend, pairs: list[QAPair], decoding: Decoding = QA_DECODING) -> list[str]:
    """Closed-book answers with the `qa` training template (system + question)."""
    conversations = [[m.model_dump() for m in QA.prompt(question=p.question)] for p in pairs]
    return [replies[0] for replies in backend.chat(conversations, decoding)]


def embedding_similarity(predictions: list[str], references: list[str], encoder) -> float:
    """Mean cosine of each prediction's and its reference's sentence vectors (`encoder.encode`
    returns unit-length rows, so the cosine is their dot product)."""
    import numpy as np

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return float(np.mean(np.sum(encoder.encode(predictions) * encoder.encode(references), axis=1)))


def similarity_encoder():
    """The packaged sentence encoder, or (None, why) when it is not installed."""
    from econlm.rag.embeddings import MiniLMEmbedder

    try:
        return MiniLMEmbedder(), None
    except UserError as exc:  # MissingExtraError included
        return None, str(exc)


def evaluate_qa(
    backend: Backend,
    out_dir: str | Path,
    corpus_dir: str | Path,
    qa_file: str | Path = DEFAULT_QA_FILE,
    split: str = "test",
    limit: int | None = None,
    mmlu_dir: str | Path | None = None,
    shots: int = N_SHOTS,
    decoding: Decoding = QA_DECODING,
    seed: int = 0,
) -> MetricReport:
    """Q&A metrics of one loaded model (`econlm.evaluate.load_backend`) on the split's pairs, plus
    MMLU-econ accuracy unless `mmlu_dir` is "" (skip)."""
    qa_file = Path(qa_file)
    if not qa_file.is_file():
        raise UserError(f"{qa_file}: no Q&A file (write one with `econlm qa synthesize`)")
    pairs = load_qa_pairs(qa_file, corpus_dir, split, limit, seed)
    if not backend.has_chat_template:
        raise UserError(f"{backend.name}: Q&A evaluation uses the chat prompt of training; this model has no chat template")

    started = time.perf_counter()
    raw = answer_questions(backend, pairs, decoding)
    answers = [first_paragraph(text) for text in raw]
    qa_seconds = time.perf_counter() - started
    report = qa_report(answers, [p.answer for p in pairs])
    encoder, no_encoder = similarity_encoder()
    report.metrics["minilm_cosine"] = (embedding_similarity(answers, [p.answer for p in pairs], encoder)
                                       if encoder is not None else None)
    predictions = [
        QAPrediction(id=f"qa-{p.source_id}-{k}", task="qa", input=p.question, reference=p.answer, prediction=a,
                     raw_output=r, token_f1=token_f1(a, p.answer), source_id=p.source_id)
        for k, (p, a, r) in enumerate(zip(pairs, answers, raw))
    ]

    mmlu_rows: list[dict[str, Any]] = []
    mmlu_path = default_mmlu_dir(corpus_dir) if mmlu_dir is None else (Path(mmlu_dir) if str(mmlu_dir) else None)
    if mmlu_path is not None:
        mmlu, mmlu_rows = evaluate_mmlu(backend, mmlu_path, shots)
        report.metrics.update({
            "mmlu_accuracy": mmlu["accuracy"],
            "mmlu_accuracy_ci95": mmlu["accuracy_ci95"],
            "mmlu_accuracy_option_text": mmlu["accuracy_option_text"],
            "mmlu_accuracy_option_text_ci95": mmlu["accuracy_option_text_ci95"],
            "mmlu_n": mmlu["n"],
            "mmlu": mmlu,
        })
    report.provenance = provenance.build(
        corpus_dir=corpus_dir,
        model=backend,
        seed=seed,
        task="qa",
        split=split,
        n_examples=len(pairs),
        limit=limit,
        qa_file=str(qa_file),
        qa_file_sha256=sha256_file(qa_file),
        mmlu_dir=str(mmlu_path) if mmlu_path else None,
        mmlu_scoring=f"{shots}-shot from dev; log-likelihood of ' A'..' D' (accuracy) and of each option "
                     "text per byte (accuracy_option_text)" if mmlu_path else None,
        prompting="zero-shot chat, closed book",
        prompt_template=QA.id,
        answer="reply up to its first blank line",
        minilm_cosine=f"{SIMILARITY_DEFINITION}, {encoder.name}" if encoder is not None else f"not computed: {no_encoder}",
        decoding=dataclasses.asdict(decoding),
        batch_size=backend.batch_size,
        qa_seconds=round(qa_seconds, 2),
        seconds=round(time.perf_counter() - started, 2),
    )
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "predictions.jsonl", predictions)
        if mmlu_rows:
            write_jsonl(tmp / "mmlu_predictions.jsonl", mmlu_rows)
            plot_mmlu(report.metrics["mmlu"], tmp / "mmlu.png", backend.name)
        atomic_write_json(tmp / "metrics.json", report.model_dump(mode="json"))
    return report


def plot_mmlu(mmlu: dict[str, Any], path: Path, title: str) -> Path:
    """Per-subject accuracy (letters and option texts) with 95% intervals and the chance line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from econlm.io import atomic_write_bytes

    groups = {**mmlu["per_subject"], "all": mmlu}
    names = [name.replace("high_school_", "hs ").replace("_", " ") for name in groups]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for offset, (key, label) in enumerate((("accuracy", "letter"), ("accuracy_option_text", "option text"))):
        values = [g[key] for g in groups.values()]
        errors = [[v - g[f"{key}_ci95"][0] for v, g in zip(values, groups.values())],
                  [g[f"{key}_ci95"][1] - v for v, g in zip(values, groups.values())]]
        ax.bar([i + (offset - 0.5) * 0.38 for i in range(len(groups))], values, 0.38, yerr=errors, capsize=3,
               label=label)
    ax.axhline(mmlu["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)), [f"{n}\n(n={g['n']})" for n, g in zip(names, groups.values())], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"accuracy ({mmlu['shots']}-shot)")
    ax.set_title(f"MMLU-econ: {title}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
