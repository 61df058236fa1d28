"""Task datasets: chat format, recorded templates, determinism, and no held-out paper in train."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from econlm.data.build import build_datasets, load_examples
from econlm.data.templates import ANSWER_TO_LABEL, CLASSIFY, QA, TITLE
from econlm.errors import UserError
from econlm.types import QAPair


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_task_and_split_is_written_in_chat_format(small_corpus, tmp_path):
    manifest = build_datasets(small_corpus, "title,classify", tmp_path / "ds")
    assert manifest["counts"] == {t: {"train": 30, "validation": 12, "test": 12} for t in ("title", "classify")}
    row = read(tmp_path / "ds" / "classify" / "test.jsonl")[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["template"] == CLASSIFY.id == "econ-classify@1"
    assert row["messages"][2]["content"] in ANSWER_TO_LABEL
    assert row["task"] == "classify" and row["split"] == "test" and row["id"] == f"classify-{row['source_id']}"
    title = read(tmp_path / "ds" / "title" / "train.jsonl")[0]
    assert title["template"] == TITLE.id
    assert title["messages"][1]["content"].endswith(title["messages"][1]["content"].split("Abstract: ", 1)[1])


def test_classification_answers_start_with_distinct_words():
    firsts = {answer.split()[0] for answer in ANSWER_TO_LABEL}
    assert len(firsts) == 3


def test_build_is_deterministic_given_seed(small_corpus, tmp_path):
    build_datasets(small_corpus, ["title"], tmp_path / "a", seed=7)
    build_datasets(small_corpus, ["title"], tmp_path / "b", seed=7)
    build_datasets(small_corpus, ["title"], tmp_path / "c", seed=8)
    a, b, c = (tmp_path / d / "title" / "train.jsonl" for d in "abc")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_no_validation_or_test_paper_leaks_into_train(small_corpus, tmp_path):
    # Plant a copy of a test paper (new id, same abstract) and a same-id copy in train.
    test_rows = [json.loads(l) for l in (small_corpus / "test.jsonl").read_text().splitlines()]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("validation", "test"):
        (corpus / f"{split}.jsonl").write_text((small_corpus / f"{split}.jsonl").read_text())
    planted = {**test_rows[0], "arxiv_id": "2501.99999"}
    train = (small_corpus / "train.jsonl").read_text() + json.dumps(planted) + "\n"
    (corpus / "train.jsonl").write_text(train)

    manifest = build_datasets(corpus, "title,classify", tmp_path / "ds")
    assert manifest["train_papers_dropped_as_leaks"] == 1
    held_out = {r["arxiv_id"] for split in ("validation", "test") for r in map(json.loads, (corpus / f"{split}.jsonl").read_text().splitlines())}
    held_abstracts = {r["abstract"] for split in ("validation", "test") for r in map(json.loads, (corpus / f"{split}.jsonl").read_text().splitlines())}
    for task in ("title", "classify"):
        for ex in load_examples(tmp_path / "ds", task, "train"):
            assert ex.source_id not in held_out
            assert not any(a in ex.messages[1].content for a in held_abstracts)


def test_qa_examples_follow_their_paper_split(small_corpus, tmp_path):
    ids = {split: json.loads((small_corpus / f"{split}.jsonl").read_text().splitlines()[0])["arxiv_id"] for split in ("train", "test")}
    pairs = [
        QAPair(source_id=ids["train"], question="What does the paper estimate?", answer="A demand elasticity."),
        QAPair(source_id=ids["train"], question="Which data?", answer="Scanner data.",
               turns=[{"role": "user", "content": "From where?"}, {"role": "assistant", "content": "US stores."}]),
        QAPair(source_id=ids["test"], question="What is the main result?", answer="Prices rise."),
    ]
    qa_file = tmp_path / "qa.jsonl"
    QAPair.write_jsonl(qa_file, pairs)
    manifest = build_datasets(small_corpus, "qa", tmp_path / "ds", qa_file=qa_file)
    assert manifest["counts"]["qa"] == {"train": 2, "validation": 0, "test": 1}
    train = sorted(load_examples(tmp_path / "ds", "qa", "train"), key=lambda e: e.id)
    assert [e.id for e in train] == [f"qa-{ids['train']}-1", f"qa-{ids['train']}-2"]
    assert [m.role for m in train[1].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert train[0].template == QA.id


def test_qa_task_needs_a_qa_file(small_corpus, tmp_path):
    with pytest.raises(UserError, match="--qa-file"):
        build_datasets(small_corpus, "title,qa", tmp_path / "ds")
    with pytest.raises(UserError, match="unknown task"):
        build_datasets(small_corpus, "summary", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()



def test_a_corpus_whose_train_papers_all_leak_is_refused(small_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("validation", "test"):
        (corpus / f"{split}.jsonl").write_bytes((small_corpus / f"{split}.jsonl").read_bytes())
    test_rows = [json.loads(line) for line in (small_corpus / "test.jsonl").read_text().splitlines()]
    copies = [{**row, "arxiv_id": f"2301.{i:05d}"} for i, row in enumerate(test_rows[:3])]  # same abstracts, new ids
    (corpus / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in copies))
    with pytest.raises(UserError, match=f"^{corpus}: no train papers left: all 3 are also in validation or test"):
        build_datasets(corpus, "title", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_an_output_directory_with_other_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("\\section{Intro}")
    with pytest.raises(UserError, match=f"^{out}: not replaced: it holds 'thesis.tex', which econlm did not write"):
        build_datasets(tmp_path / "no-corpus-needed", "title", out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_rebuilding_replaces_what_econlm_wrote(small_corpus, tmp_path):
    out = tmp_path / "ds"
    build_datasets(small_corpus, "title,classify", out)
    build_datasets(small_corpus, "title", out)
    assert sorted(p.name for p in out.iterdir()) == [".econlm-output.json", "manifest.json", "title"]

def test_cli_build_writes_manifest(small_corpus, tmp_path):
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "data", "build", "--corpus", str(small_corpus), "--tasks", "title", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["templates"] == {"title": "econ-title@1"}
    assert len(manifest["corpus_sha256"]["test"]) == 64
    missing = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "data", "build", "--corpus", str(tmp_path / "nope"), "--out", str(out)],
        capture_output=True, text=True,
    )
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
