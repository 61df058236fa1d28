"""Provenance: every stage records versions, date, machine, data hashes and the model's own
description the same way (that the core never reaches into the benchmarks for it: test_layers.py)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import econlm
from econlm import provenance
from econlm.bench.common import write_result


class DescribedModel:
    def describe(self) -> dict:
        return {"kind": "hf", "base_model_hash": "ab" * 32}


def test_the_environment_names_versions_date_and_machine():
    env = provenance.environment()
    assert set(env) == {"versions", "date", "machine"}
    assert env["versions"]["econlm"] == econlm.__version__ and "torch" in env["versions"]
    assert set(env["versions"]) <= {"econlm", *provenance.LIBRARIES}
    assert set(env["machine"]) == {"cpu", "cpu_features", "cores", "python", "platform", "allocator"}
    assert datetime.fromisoformat(env["date"]).utcoffset().total_seconds() == 0


def test_build_hashes_each_split_and_takes_the_model_from_its_describe(small_corpus):
    record = provenance.build(corpus_dir=small_corpus, model=DescribedModel(), seed=7, task="title", limit=None)
    assert record["task"] == "title" and record["limit"] is None and record["seed"] == 7
    assert record["corpus"] == str(small_corpus.resolve())
    assert record["data_sha256"] == {split: hashlib.sha256((small_corpus / f"{split}.jsonl").read_bytes()).hexdigest()
                                     for split in ("train", "validation", "test")}
    assert record["model"] == DescribedModel().describe()
    assert {"versions", "date", "machine"} <= set(record)
    assert set(provenance.build(task="qa")) == {"task", "versions", "date", "machine"}


def test_benchmark_results_carry_the_same_environment(tmp_path):
    path = write_result(tmp_path, "eval", {"peak_rss_mb": 1.0})
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "eval" and saved["peak_rss_mb"] == 1.0
    assert set(saved["machine"]) == set(provenance.machine()) and "torch" in saved["versions"]

