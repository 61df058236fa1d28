"""MMLU-econ scoring: prompt format, the shared CSVs, Wilson intervals, and log-likelihood scoring on
a tiny random LLaMA checked against a manual forward pass."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from econlm.backends import get_backend
from econlm.errors import UserError
from econlm.qa.mmlu import (
    MCQuestion,
    cloze_prompt,
    evaluate_mmlu,
    letter_prompt,
    load_mmlu,
    mmlu_metrics,
)
from econlm.metrics import wilson_interval
from conftest import SHARED_MMLU


def write_mmlu(root: Path) -> Path:
    """Two subjects, 5 dev and 3 val questions each."""
    root.mkdir(parents=True, exist_ok=True)
    for subject in ("econometrics", "high_school_microeconomics"):
        for part, n in (("dev", 5), ("val", 3)):
            with (root / f"{subject}_{part}.csv").open("w", newline="") as fh:
                writer = csv.writer(fh)
                for i in range(n):
                    writer.writerow([f"{subject} {part} question {i}, with a comma?\nSecond line.",
                                     f"alpha {i}", f"beta {i}", f"gamma {i}", f"delta {i}", "ABCD"[i % 4]])
    return root


def test_letter_and_cloze_prompts():
    shot = MCQuestion("econometrics", "Shocks to a stationary AR process will", ("die away", "persist", "grow", "never occur"), "A")
    query = MCQuestion("econometrics", "OLS is", ("biased", "BLUE", "nonlinear", "undefined"), "B")
    assert letter_prompt([shot], query) == (
        "The following are multiple choice questions (with answers) about econometrics.\n\n"
        "Shocks to a stationary AR process will\nA. die away\nB. persist\nC. grow\nD. never occur\nAnswer: A\n\n"
        "OLS is\nA. biased\nB. BLUE\nC. nonlinear\nD. undefined\nAnswer:"
    )
    assert cloze_prompt([shot], query) == (
        "The following are multiple choice questions (with answers) about econometrics.\n\n"
        "Question: Shocks to a stationary AR process will\nAnswer: die away\n\n"
        "Question: OLS is\nAnswer:"
    )


def test_shared_mmlu_files_parse():
    if not SHARED_MMLU.is_dir():
        pytest.fail(f"the shared MMLU data is missing at {SHARED_MMLU}")
    data = load_mmlu(SHARED_MMLU)
    assert set(data) == {"econometrics", "high_school_macroeconomics", "high_school_microeconomics"}
    for dev, val in data.values():
        assert len(dev) == 5 and len(val) > 0
        assert all(q.answer in "ABCD" and len(q.options) == 4 and q.question for q in dev + val)


def test_bad_row_names_file_and_line(tmp_path):
    root = write_mmlu(tmp_path / "mmlu")
    with (root / "econometrics_val.csv").open("a") as fh:
        fh.write("a question,only,three\n")
    with pytest.raises(UserError, match=r"econometrics_val.csv:4: expected question,A,B,C,D"):
        load_mmlu(root)


def test_wilson_interval_hand_computed():
    # 8 of 10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), half-width 1.96 sqrt(0.016 + 0.009604) / 1.38416
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94332, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_metrics_per_subject():
    rows = [
        {"subject": "a", "answer": "A", "predicted": "A", "predicted_option_text": "B"},
        {"subject": "a", "answer": "B", "predicted": "C", "predicted_option_text": "B"},
        {"subject": "b", "answer": "D", "predicted": "D", "predicted_option_text": "D"},
    ]
    metrics = mmlu_metrics(rows)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["accuracy_option_text"] == pytest.approx(2 / 3)
    assert metrics["per_subject"]["a"]["accuracy"] == 0.5 and metrics["per_subject"]["b"]["n"] == 1
    assert metrics["chance"] == 0.25


def test_scores_match_a_manual_forward_pass(tiny_llama, tmp_path):
    backend = get_backend(f"transformers:{tiny_llama}", batch_size=4)
    root = write_mmlu(tmp_path / "mmlu")
    metrics, rows = evaluate_mmlu(backend, root, shots=5)
    assert metrics["n"] == 6 and len(rows) == 6
    assert metrics["accuracy"] == pytest.approx(sum(r["predicted"] == r["answer"] for r in rows) / 6)

    # The letter log-likelihoods of the first question, recomputed token by token.
    dev, val = load_mmlu(root)["econometrics"]
    prompt = letter_prompt(dev, val[0])
    tokenizer, model = backend.tokenizer, backend.model
    for letter in "AD":
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_ids = tokenizer(prompt + f" {letter}")["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        with torch.inference_mode():
            logprobs = model(torch.tensor([full_ids])).logits[0].log_softmax(-1)
        expected = sum(logprobs[i - 1, full_ids[i]].item() for i in range(len(prompt_ids), len(full_ids)))
        assert rows[0]["letter_logprobs"][letter] == pytest.approx(expected, abs=1e-4)
