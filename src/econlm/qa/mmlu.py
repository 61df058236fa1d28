"""MMLU economics subjects as a general-knowledge check: does domain tuning keep textbook economics?

Data: `{subject}_dev.csv` (5 worked examples) and `{subject}_val.csv` (scored) per subject, CSV
without header: question, A, B, C, D, answer letter. By default they are read from `mmlu-econ/` beside the
corpus directory, the layout of the shared data (../shared/data/{arxiv-econ,mmlu-econ}); its README asks
that the files stay there rather than be copied into the project, so they do not ship in the package.

Two scorings, both 5-shot from the subject's dev file and both by log-likelihood (no parsing):
- `accuracy` (the MMLU standard, Hendrycks et al.): the prompt lists the lettered options and
  ends in "Answer:"; the prediction is the letter among " A".." D" with the highest log-likelihood.
- `accuracy_option_text` (cloze, like lm-evaluation-harness `acc_norm`): the shots answer with the
  option's text; each option text is scored after "Answer:" and divided by its length in bytes.
  Small models are often near chance with letters but not with option texts.
Prompts are plain text (no chat template), identical for base and fine-tuned models.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from econlm.errors import UserError
from econlm.metrics import wilson_interval

LETTERS = ("A", "B", "C", "D")
N_SHOTS = 5


@dataclass(frozen=True)
class MCQuestion:
    subject: str
    question: str
    options: tuple[str, str, str, str]
    answer: str  # "A".."D"


def default_mmlu_dir(corpus_dir: str | Path) -> Path:
    """`mmlu-econ/` beside the corpus directory (`--mmlu-dir` overrides it)."""
    return Path(corpus_dir).resolve().parent / "mmlu-econ"


def read_questions(path: Path, subject: str) -> list[MCQuestion]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    questions = []
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if len(row) != 6 or row[5].strip() not in LETTERS:
                raise UserError(f"{path}:{lineno}: expected question,A,B,C,D,answer-letter")
            questions.append(MCQuestion(subject, row[0].strip(), tuple(o.strip() for o in row[1:5]), row[5].strip()))
    return questions


def load_mmlu(mmlu_dir: str | Path) -> dict[str, tuple[list[MCQuestion], list[MCQuestion]]]:
    """{subject: (dev questions, val questions)} for every subject with both files."""
    mmlu_dir = Path(mmlu_dir)
    subjects = sorted(p.name.removesuffix("_val.csv") for p in mmlu_dir.glob("*_val.csv"))
    if not subjects:
        raise UserError(f"{mmlu_dir}: no <subject>_val.csv files (MMLU CSVs without header)")
    return {
        s: (read_questions(mmlu_dir / f"{s}_dev.csv", s), read_questions(mmlu_dir / f"{s}_val.csv", s))
        for s in subjects
    }


def _header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _lettered(q: MCQuestion) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, q.options))
    return f"{q.question}\n{options}\nAnswer:"


def letter_prompt(shots: Sequence[MCQuestion], q: MCQuestion) -> str:
    """The MMLU prompt: header, shots answered with their letter, the question ending in "Answer:"."""
    worked = "".join(f"{_lettered(s)} {s.answer}\n\n" for s in shots)
    return _header(q.subject) + worked + _lettered(q)


def _text_answer(q: MCQuestion) -> str:
    return q.options[LETTERS.index(q.answer)]


def cloze_prompt(shots: Sequence[MCQuestion], q: MCQuestion) -> str:
    """Header, shots answered with the option text, the question ending in "Answer:"."""
    worked = "".join(f"Question: {s.question}\nAnswer: {_text_answer(s)}\n\n" for s in shots)
    return _header(q.subject) + worked + f"Question: {q.question}\nAnswer:"


def evaluate_mmlu(backend, mmlu_dir: str | Path, shots: int = N_SHOTS) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, one row per question) for a backend with plain-text scoring (`score_text_options`;
    a chat endpoint has none and says so)."""
    rows: list[dict[str, Any]] = []
    for subject, (dev, val) in load_mmlu(mmlu_dir).items():
        if len(dev) < shots:
            raise UserError(f"{subject}_dev.csv has {len(dev)} questions, fewer than {shots} shots")
        worked = dev[:shots]
        letter_scores = backend.score_text_options([letter_prompt(worked, q) for q in val], [f" {x}" for x in LETTERS])
        for q, scores in zip(val, letter_scores):
            options = [f" {text}" for text in q.options]
            text_scores = backend.score_text_options([cloze_prompt(worked, q)], options)[0]
            normalised = [s / len(o.encode("utf-8")) for s, o in zip(text_scores, options)]
            rows.append({
                "subject": subject,
                "question": q.question,
                "answer": q.answer,
                "predicted": LETTERS[max(range(4), key=scores.__getitem__)],
                "predicted_option_text": LETTERS[max(range(4), key=normalised.__getitem__)],
                "letter_logprobs": dict(zip(LETTERS, scores)),
                "option_text_logprobs_per_byte": dict(zip(LETTERS, normalised)),
            })
    return mmlu_metrics(rows, shots), rows


def mmlu_metrics(rows: Sequence[dict[str, Any]], shots: int = N_SHOTS) -> dict[str, Any]:
    """Accuracy (letters) and option-text accuracy, overall (micro) and per subject, with 95% intervals."""
    def summary(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        correct = sum(r["predicted"] == r["answer"] for r in group)
        cloze = sum(r["predicted_option_text"] == r["answer"] for r in group)
        return {
            "accuracy": correct / len(group),
            "accuracy_ci95": wilson_interval(correct, len(group)),
            "accuracy_option_text": cloze / len(group),
            "accuracy_option_text_ci95": wilson_interval(cloze, len(group)),
            "n": len(group),
        }

    if not rows:
        raise UserError("no MMLU questions to score")
    subjects = sorted({r["subject"] for r in rows})
    return {
        **summary(rows),
        "per_subject": {s: summary([r for r in rows if r["subject"] == s]) for s in subjects},
        "shots": shots,
        "chance": 1 / len(LETTERS),
    }
