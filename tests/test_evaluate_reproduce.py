"""`econlm reproduce` end to end on a small real corpus, with a tiny random LLaMA standing in for
the packaged models (and a LoRA adapter on it for the shipped one)."""

from __future__ import annotations

import json

import pytest

from econlm import models, reproduce
from econlm.baselines import BaselineSettings
from econlm.errors import UserError


@pytest.fixture()
def tiny_everything(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setattr(reproduce, "BASE_MODEL", str(tiny_llama))
    monkeypatch.setattr(reproduce, "ONE_SHOT_MODEL", str(tiny_llama))
    preset = reproduce.Preset("quick", eval_limit=3, baselines=BaselineSettings(names=("logreg",), test_limit=3),
                              train_preset="debug")
    monkeypatch.setitem(reproduce.PRESETS, "quick", preset)
    monkeypatch.setattr(models, "SHIPPED_ADAPTER_DIR", tmp_path / "no-adapter")
    return tiny_llama


def test_reproduce_without_an_adapter_reports_pending_rows(tiny_everything, small_corpus, tmp_path):
    path = reproduce.reproduce(small_corpus, tmp_path / "out", "quick")
    text = path.read_text()
    assert path == tmp_path / "out" / "report" / "report.md"
    assert "fine-tuned econlm rows are pending" in text and "**ours: pending**" in text
    assert "Subsets (quick preset)" in text
    evals = sorted(p.name for p in (tmp_path / "out" / "eval").iterdir())
    assert evals == ["base-classify", "base-title", "gemma-one-shot-classify", "gemma-one-shot-title"]
    results = json.loads((tmp_path / "out" / "report" / "results.json").read_text())
    ours = [r["model"] for r in results["table2"] if r["source"] == "ours"]
    assert len(ours) == 3  # logreg, the base model zero-shot and the one-shot model
    assert (tmp_path / "out" / "datasets" / "manifest.json").is_file()


def test_reproduce_evaluates_the_shipped_adapter(tiny_everything, small_corpus, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "shipped"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_everything))
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    monkeypatch.setattr(models, "SHIPPED_ADAPTER_DIR", adapter)
    # A classifier stacked on this adapter's log-probabilities, standing in for the shipped one.
    from econlm import classifier
    from econlm.backends import get_backend

    classifier.fit(get_backend(f"transformers:{adapter}"), small_corpus, jobs=1, progress=lambda m: None).save(
        tmp_path / "classifier")
    monkeypatch.setattr(classifier, "shipped_classifier_dir", lambda: tmp_path / "classifier")
    path = reproduce.reproduce(small_corpus, tmp_path / "out", "quick", report_dir=tmp_path / "reports" / "r")
    text = path.read_text()
    assert "shipped adapter" in text and "pending" not in text.split("## Targets")[0]
    stacked = json.loads((tmp_path / "out" / "eval" / "econlm-classifier" / "metrics.json").read_text())
    assert stacked["provenance"]["prompting"] == "stacked" and stacked["metrics"]["n"] == 3
    assert "econlm classifier: " in text.split("## Table 2")[1].split("## The study's")[0]
    provenance = json.loads((tmp_path / "out" / "eval" / "econlm-title" / "metrics.json").read_text())["provenance"]
    assert provenance["model"]["kind"] == "adapter" and provenance["n_examples"] == 3
    base_run = json.loads((tmp_path / "out" / "eval" / "base-title" / "metrics.json").read_text())["provenance"]
    assert provenance["model"]["base"]["hash"] == base_run["model"]["hash"]  # one hash per model across runs


def test_train_needs_the_full_preset(small_corpus, tmp_path):
    with pytest.raises(UserError, match="--train needs --preset full"):
        reproduce.reproduce(small_corpus, tmp_path, "quick", train=True)
