"""Records declare their fields: the files econlm writes round-trip, an unknown key is an error
naming file and line (a corpus paper's extra keys are ignored), and committed files still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from econlm.errors import UserError
from econlm.io import write_jsonl
from econlm.types import (
    ClassifyPrediction,
    LMClassifyPrediction,
    Paper,
    QAPair,
    QAPrediction,
    TitlePrediction,
    read_predictions,
)

REPO = Path(__file__).resolve().parents[1]
BASE = {"input": "We study prices.", "reference": "Econometrics", "prediction": "Econometrics"}
PREDICTIONS = [
    TitlePrediction(id="title-1", task="title", **BASE, raw_output="Econometrics\nmore"),
    ClassifyPrediction(id="classify-1", task="classify", **BASE, label="econ.EM", predicted_label="econ.EM"),
    LMClassifyPrediction(id="classify-2", task="classify", **BASE, label="econ.EM", predicted_label="econ.EM",
                         option_logprobs={"Econometrics": -0.1, "General Economics": -3.0}, free_generation="It is econometrics.",
                         free_generation_label=None),
    QAPrediction(id="qa-1-0", task="qa", **BASE, raw_output="Econometrics\n\nmore", token_f1=1.0, source_id="2101.00001"),
]


def test_predictions_round_trip_as_their_task_records(tmp_path):
    write_jsonl(tmp_path / "predictions.jsonl", PREDICTIONS)
    rows = list(read_predictions(tmp_path / "predictions.jsonl"))
    assert [type(r) for r in rows] == [type(p) for p in PREDICTIONS] and rows == PREDICTIONS
    # A baseline's row has only the labels; a language model's also its scores and free text.
    baseline_row, lm_row = map(json.loads, (tmp_path / "predictions.jsonl").read_text().splitlines()[1:3])
    assert "option_logprobs" not in baseline_row and lm_row["free_generation_label"] is None


@pytest.mark.parametrize(("row", "needle"), [
    ({"id": "t", "task": "title", **BASE, "raw_output": "x", "rawoutput": "x"}, "field 'rawoutput': Extra inputs"),
    ({"id": "t", "task": "title", **BASE}, "field 'raw_output': Field required"),
    ({"id": "t", "task": "summary", **BASE}, "field 'task'"),
])
def test_a_bad_prediction_row_names_file_and_line(tmp_path, row, needle):
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, [PREDICTIONS[0], row])
    with pytest.raises(UserError) as error:
        list(read_predictions(path))
    assert str(error.value).startswith(f"{path}:2: ") and needle in str(error.value)


def test_unknown_qa_pair_key_is_an_error_and_a_paper_ignores_extra_keys(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"source_id": "2101.00001", "question": "Why?", "answer": "Because.", "turn": []}) + "\n")
    with pytest.raises(UserError, match=rf"^{path}:1: field 'turn': Extra inputs are not permitted$"):
        list(QAPair.read_jsonl(path))
    paper = Paper.model_validate({"arxiv_id": "2101.00001", "title": "T", "abstract": "A", "primary_category": "econ.EM",
                                  "submitter": "someone", "license": "cc0"})
    assert "submitter" not in paper.model_dump()
    assert set(paper.model_dump()) == {"arxiv_id", "title", "abstract", "primary_category", "categories", "authors", "published"}


def test_committed_qa_set_loads():
    pairs = list(QAPair.read_jsonl(REPO / "data" / "qa" / "econ-qa.jsonl"))
    assert len(pairs) == 401 and all(p.prompt_version == "econ-qa-synth@1" for p in pairs)
