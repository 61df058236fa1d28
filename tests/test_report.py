"""`econlm report` from fixture run directories: tables beside the study's numbers, targets, files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from econlm import report
from econlm.errors import UserError
from econlm.io import atomic_write_json, write_jsonl
from econlm.metrics import classification_report, qa_report, title_report

LABELS = ["econ.EM", "econ.GN", "econ.TH"]
TRUE = ["econ.EM", "econ.EM", "econ.GN", "econ.GN", "econ.TH"]
REFERENCES = ["Demand estimation with many markets", "Inflation and wages"]


def model_provenance(kind: str, prompting: str = "zero-shot") -> dict:
    return {"model": {"kind": kind, "model_ref": "econlm" if kind == "adapter" else "smollm2-135m-instruct",
                      "base_model": "smollm2-135m-instruct", "base_model_hash": "a" * 64,
                      "adapter_hash": "b" * 64 if kind == "adapter" else None},
            "prompting": prompting, "prompt_template": "econ-title@1", "seed": 0, "limit": None,
            "data_sha256": {"test": "c" * 64}, "decoding": {"max_new_tokens": 40, "temperature": 0.0, "top_p": 1.0},
            "versions": {"transformers": "5"}, "date": "2026-01-01"}


def write_title_run(folder, predictions, kind, prompting="zero-shot"):
    result = title_report(predictions, REFERENCES, model_provenance(kind, prompting))
    atomic_write_json(folder / "metrics.json", result.model_dump(mode="json"))
    write_jsonl(folder / "predictions.jsonl", [
        {"id": f"title-{i}", "task": "title", "input": "", "reference": r, "prediction": p, "raw_output": p}
        for i, (p, r) in enumerate(zip(predictions, REFERENCES))])
    return result


def write_classify_run(folder, predicted, provenance):
    result = classification_report(TRUE, predicted, LABELS, provenance)
    atomic_write_json(folder / "metrics.json", result.model_dump(mode="json"))
    return result


@pytest.fixture()
def run_dirs(tmp_path):
    tuned = write_title_run(tmp_path / "tuned-title", ["Demand estimation with many markets", "Inflation and wages"], "adapter")
    base = write_title_run(tmp_path / "base-title", ["The paper is about demand", "Wages"], "packaged")
    write_title_run(tmp_path / "gemma-title", ["Markets", "Wages"], "packaged", "one-shot")
    write_classify_run(tmp_path / "tuned-classify", ["econ.EM", "econ.EM", "econ.GN", "econ.TH", "econ.TH"],
                       model_provenance("adapter"))
    baselines = tmp_path / "baselines"
    for name, predicted in {"logreg": TRUE, "minilm": ["econ.GN"] * 5}.items():
        (baselines / name).mkdir(parents=True)
        write_classify_run(baselines / name, predicted,
                           {"baseline": name, "display_name": f"{name} display", "settings": {"seed": 0, "test_limit": None}})
    return tmp_path, tuned, base


def test_report_tables_and_files(run_dirs):
    root, tuned, base = run_dirs
    dirs = [root / d for d in ("tuned-title", "base-title", "gemma-title", "tuned-classify", "baselines")]
    path = report.write_report(dirs, root / "report", notes="Quick preset: subsets.")
    text = path.read_text()
    out = root / "report"
    assert {p.name for p in out.iterdir()} >= {"report.md", "table1.png", "table2.png", "results.json", "provenance.json"}
    assert "Quick preset: subsets." in text
    # Study rows keep the published numbers; ours sit beside the matching study row.
    t1 = text.split("## Table 1")[1].split("## Table 2")[0]
    # The published paper is the bar: its fine-tuned row, ours beside it, its 5-shot rows, then ours of other protocols.
    assert "| LLaMA-2-Econ (fine-tuned 7B) | study (published) | 0.16 | 0.45 | 0.24 | 0.41 |" in t1
    assert (t1.index("LLaMA-2-Econ (fine-tuned 7B) | study") < t1.index("+ LoRA (econlm) | ours")
            < t1.index("GPT-Neo-2.7B (5-shot) | study") < t1.index("(base, zero-shot) | ours")
            < t1.index("smollm2-135m-instruct (one-shot) | ours"))
    assert f"| {tuned.metrics['rouge1_f']:.3f} |" in t1
    t2 = text.split("## Table 2")[1].split("## The study's earlier conference abstract")[0]
    assert t2.index("Logistic regression | study") < t2.index("logreg display | ours") < t2.index("Random forest | study")
    assert "minilm display | ours" in t2  # beyond the study: listed after the study's rows
    assert "| 0.8000 | [0.376, 0.964] |" in t2  # the tuned model's 4/5 with its Wilson interval
    # The conference abstract's numbers are kept, labelled, after the tables.
    conference = text.split("## The study's earlier conference abstract")[1].split("## Targets")[0]
    assert "| LLaMA-2-Econ (fine-tuned) | study (conference) | 0.12 | 0.40 | 0.19 | 0.37 |" in conference
    assert "| SVC | study (conference) | 0.8571 |" in conference
    results = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in results["table2"] if r["source"] == "study"} == set(report.STUDY["published"]["classify"])
    assert {r["model"] for r in results["conference"]} == {*report.STUDY["conference"]["title"],
                                                          *report.STUDY["conference"]["classify"]}


def write_stacked_run(folder, predicted):
    provenance = {**model_provenance("adapter"), "prompting": "stacked"}
    write_classify_run(folder, predicted, provenance)
    write_jsonl(folder / "predictions.jsonl", [
        {"id": f"classify-{i}", "task": "classify", "input": "", "reference": t, "prediction": p, "label": t,
         "predicted_label": p, "probabilities": {label: float(label == p) for label in LABELS}}
        for i, (t, p) in enumerate(zip(TRUE, predicted))])


def test_targets_are_checked_against_the_fine_tuned_run(run_dirs):
    root, tuned, base = run_dirs
    runs = report.collect_runs([root / "tuned-title", root / "base-title", root / "tuned-classify"])
    checks = {(c["model"], c["target"].split()[0], "beats" in c["target"]): c for c in report.target_checks(runs)}
    assert checks[("econlm (fine-tuned)", "rouge1_f", False)]["status"] == "met"  # perfect titles
    assert checks[("econlm (fine-tuned)", "rouge1_f", False)]["gap"] == pytest.approx(1 - 0.45)
    assert checks[("econlm (fine-tuned)", "rougeL_f", True)]["status"] == "met"  # and better than the base
    assert checks[("econlm classifier", "accuracy", False)]["status"] == "pending"  # no classifier run given
    assert checks[("econlm (fine-tuned)", "accuracy", True)]["status"] == "pending"  # no base classify run given


QWEN = {"ref": "qwen2.5-coder-0.5b-instruct", "kind": "packaged", "name": "qwen2.5-coder-0.5b-instruct", "hash": "f" * 64,
        "source_sha256": "e" * 64, "base": None}


def write_model_title_run(folder, predictions, model: dict):
    result = title_report(predictions, REFERENCES, {**model_provenance("packaged"), "model": model})
    atomic_write_json(folder / "metrics.json", result.model_dump(mode="json"))
    return result


def test_each_fine_tuned_model_beats_the_base_it_was_trained_from(run_dirs):
    """Two bases in Table 1 (SmolLM2, listed first, and Qwen2.5): the Qwen adapter is held to the Qwen
    base (by content hash; by name for a llama.cpp run, which records no hash; the run on its own
    engine first), the SmolLM2 adapter to SmolLM2's."""
    root, smol_tuned, smol_base = run_dirs
    qwen_tuned = write_model_title_run(root / "qwen-tuned", ["Demand estimation", "Inflation and wages"], {
        "backend": "transformers:qwen-econlm", "ref": "qwen-econlm", "kind": "adapter", "name": "qwen-econlm",
        "hash": "9" * 64, "source_sha256": None, "base": QWEN})
    qwen_base = write_model_title_run(root / "qwen-base", REFERENCES, {"backend": "transformers:qwen2.5-coder-0.5b-instruct", **QWEN})
    qwen_llamacpp = write_model_title_run(root / "qwen-base-llamacpp", ["Markets", "Inflation"], {
        "backend": "llamacpp:qwen2.5-coder-0.5b-instruct", **QWEN, "hash": None, "exported_from_hash": None})
    assert smol_base.metrics["rouge1_f"] < qwen_tuned.metrics["rouge1_f"] < qwen_base.metrics["rouge1_f"]

    def beats_base(dirs: list[str]) -> dict[str, dict]:
        runs = report.collect_runs([root / d for d in dirs])
        return {c["model"]: c for c in report.target_checks(runs) if c["target"].startswith("rouge1_f beats")}

    qwen_label, smol_label = "econlm: qwen2.5-coder-0.5b-instruct + LoRA (qwen-econlm)", "econlm: smollm2-135m-instruct + LoRA (econlm)"
    checks = beats_base(["base-title", "tuned-title", "qwen-base-llamacpp", "qwen-tuned", "qwen-base"])
    assert checks[qwen_label]["target"] == f"rouge1_f beats its base model qwen2.5-coder-0.5b-instruct ({qwen_base.metrics['rouge1_f']:.3f})"
    assert checks[qwen_label]["status"] == "missed"
    assert checks[qwen_label]["gap"] == pytest.approx(qwen_tuned.metrics["rouge1_f"] - qwen_base.metrics["rouge1_f"], abs=1e-4)
    assert checks[smol_label]["status"] == "met"
    assert checks[smol_label]["gap"] == pytest.approx(smol_tuned.metrics["rouge1_f"] - smol_base.metrics["rouge1_f"], abs=1e-4)
    # Without the transformers run of the Qwen base, its llama.cpp run (matched by name) is the bar.
    checks = beats_base(["base-title", "qwen-base-llamacpp", "qwen-tuned"])
    assert checks["econlm (fine-tuned)"]["status"] == "met"
    assert checks["econlm (fine-tuned)"]["gap"] == pytest.approx(qwen_tuned.metrics["rouge1_f"] - qwen_llamacpp.metrics["rouge1_f"], abs=1e-4)
    # Another model's base is never its base: with only SmolLM2's, the Qwen adapter's check is pending.
    checks = beats_base(["base-title", "qwen-tuned"])
    assert checks["econlm (fine-tuned)"]["status"] == "pending"
    assert checks["econlm (fine-tuned)"]["target"] == "rouge1_f beats its base model qwen2.5-coder-0.5b-instruct (no run)"


def test_classifier_row_targets_and_paired_bootstrap(run_dirs):
    root, _, _ = run_dirs
    for name, predicted in {"xgboost": ["econ.EM", "econ.EM", "econ.GN", "econ.GN", "econ.EM"]}.items():
        (root / "baselines" / name).mkdir()
        write_classify_run(root / "baselines" / name, predicted,
                           {"baseline": name, "display_name": f"{name} display", "settings": {"seed": 0}})
        write_jsonl(root / "baselines" / name / "predictions.jsonl", [
            {"id": f"classify-{i}", "task": "classify", "input": "", "reference": t, "prediction": p, "label": t,
             "predicted_label": p} for i, (t, p) in enumerate(zip(TRUE, predicted))])
    (root / "baselines" / "logreg" / "metrics.json").unlink()
    (root / "baselines" / "minilm" / "metrics.json").unlink()
    write_stacked_run(root / "stacked", TRUE)
    text = report.write_report([root / "tuned-classify", root / "stacked", root / "baselines"], root / "report").read_text()
    t2 = text.split("## Table 2")[1].split("## The study's")[0]
    assert t2.index("LLaMA-2-Econ | study") < t2.index("econlm classifier: ") < t2.index("GPT-4 (few-shot) | study")
    results = json.loads((root / "report" / "results.json").read_text())
    versus = results["classifier_vs_best_baseline"]
    assert versus["baseline"] == "xgboost display" and versus["n"] == 5
    assert versus["difference"] == pytest.approx(1.0 - 0.8)
    assert versus["ci95"][0] <= versus["difference"] <= versus["ci95"][1]
    checks = {c["target"]: c for c in results["targets"] if c["model"] == "econlm classifier"}
    assert checks["accuracy >= 0.88"]["status"] == "met"
    assert checks["accuracy >= best baseline + 0.02 (xgboost display, 0.800)"]["gap"] == pytest.approx(0.18)
    tuned = next(c for c in results["targets"] if c["target"].startswith("accuracy >= best baseline ("))
    assert tuned["status"] == "met" and tuned["value"] == pytest.approx(0.8)  # 0.8 >= 0.8


def test_missing_fine_tuned_run_is_reported_as_pending(run_dirs):
    root, _, _ = run_dirs
    path = report.write_report([root / "base-title", root / "baselines"], root / "report")
    text = path.read_text()
    assert "econlm (fine-tuned) | **ours: pending**" in text
    assert "| pending |" in text


def test_a_directory_without_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no metrics.json"):
        report.collect_runs([tmp_path])


def test_cli_report(run_dirs):
    root, _, _ = run_dirs
    result = subprocess.run([sys.executable, "-m", "econlm.cli", "report", str(root / "base-title"),
                             "--out", str(root / "cli-report")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (root / "cli-report" / "report.md").is_file()


def test_exported_gguf_runs_are_set_beside_their_source_model(run_dirs):
    """A llama.cpp run of an exported adapter is paired by the source hash in the GGUF, rescored on the
    shared papers, and kept out of Tables 1 and 2."""
    root, tuned, _ = run_dirs
    gguf = root / "tuned-title-q8_0"
    provenance = model_provenance("adapter")
    provenance["model"] = {"kind": "gguf", "model_ref": "/x/econlm.q8_0.gguf", "model_hash": "d" * 64,
                           "source_model_hash": "b" * 64}
    exported = title_report(["Demand estimation with markets"], REFERENCES[:1], provenance)
    atomic_write_json(gguf / "metrics.json", exported.model_dump(mode="json"))
    write_jsonl(gguf / "predictions.jsonl", [{"id": "title-0", "task": "title", "input": "", "reference": REFERENCES[0],
                                             "prediction": "Demand estimation with markets",
                                             "raw_output": "Demand estimation with markets"}])
    text = report.write_report([root / "tuned-title", root / "base-title", gguf], root / "report").read_text()
    parity = json.loads((root / "report" / "results.json").read_text())["export_parity"]
    rouge1 = next(p for p in parity if p["metric"] == "rouge1_f")
    # The tuned title for paper 0 is exact (ROUGE-1 1.0); the exported one drops "many": P=1, R=4/5, F=8/9.
    assert rouge1["n"] == 1 and rouge1["transformers_value"] == pytest.approx(1.0)
    assert rouge1["ratio"] == pytest.approx(8 / 9) and not rouge1["within_target"]
    assert "econlm.q8_0.gguf (llama.cpp)" in text.split("## Exported model")[1]
    assert "llama.cpp" not in text.split("## Table 1")[1].split("## Table 2")[0]
    gguf_row = next(line for line in text.split("## Provenance")[1].splitlines() if "llama.cpp" in line)
    assert f"`{'d' * 16}` | `{'b' * 16}`" in gguf_row  # the GGUF file's hash, then the model it was exported from


def test_model_identity_reads_both_provenance_formats():
    """Runs recorded with `ModelRef.describe()` and the committed ones with flat keys name a model alike."""
    base = {"ref": "smollm2-135m-instruct", "kind": "packaged", "name": "smollm2-135m-instruct", "hash": "a" * 64,
            "source_sha256": "e" * 64, "base": None}
    new_adapter = {"backend": "transformers:econlm", "ref": "econlm", "kind": "adapter", "name": "econlm",
                   "hash": "b" * 64, "source_sha256": None, "base": base}
    new_gguf = {"backend": "llamacpp:/x/econlm.q8_0.gguf", "ref": "/x/econlm.q8_0.gguf", "kind": "gguf",
                "name": "econlm.q8_0", "hash": None, "source_sha256": "d" * 64, "base": None,
                "exported_from_hash": "b" * 64}
    old_gguf = {"kind": "gguf", "model_ref": "/x/econlm.q8_0.gguf", "model_hash": "d" * 64, "source_model_hash": "b" * 64}
    old, new = report.ModelIdentity.of(model_provenance("adapter")["model"]), report.ModelIdentity.of(new_adapter)
    assert (old.kind, old.base_name, old.content_hash, old.base_hash, old.adapter_hash) == \
           (new.kind, new.base_name, new.content_hash, new.base_hash, new.adapter_hash) == \
           ("adapter", "smollm2-135m-instruct", "b" * 64, "a" * 64, "b" * 64)
    packaged = report.ModelIdentity.of({"backend": "transformers:smollm2-135m-instruct", **base})
    assert packaged.content_hash == packaged.base_hash == "a" * 64 and packaged.adapter_hash is None
    for gguf in (report.ModelIdentity.of(new_gguf), report.ModelIdentity.of(old_gguf)):
        assert (gguf.engine, gguf.file_sha256, gguf.exported_from, gguf.content_hash) == ("llamacpp", "d" * 64, "b" * 64, None)


def test_few_shot_rows_sit_with_the_published_five_shot_baselines(run_dirs):
    root, _, _ = run_dirs
    few = root / "few-title"
    provenance = {**model_provenance("packaged", "few-shot"), "few_shot_examples": ["1", "2", "3", "4", "5"]}
    atomic_write_json(few / "metrics.json", title_report(["Markets", "Wages"], REFERENCES, provenance).model_dump(mode="json"))
    text = report.write_report([root / "tuned-title", root / "base-title", few], root / "report").read_text()
    t1 = text.split("## Table 1")[1].split("## Table 2")[0]
    assert (t1.index("GPT-Neo-2.7B (5-shot) | study") < t1.index("smollm2-135m-instruct (5-shot) | ours")
            < t1.index("(base, zero-shot) | ours"))


def write_qa_run(folder, prediction: str, kind: str, extra_metrics: dict) -> None:
    result = qa_report([prediction], ["Emissions fall by 8 percent after the carbon tax."],
                       {**model_provenance(kind), "prompt_template": "econ-qa@1"})
    result.metrics.update(extra_metrics)
    atomic_write_json(folder / "metrics.json", result.model_dump(mode="json"))


def test_table3_shows_the_minilm_cosine_beside_rouge(tmp_path):
    write_qa_run(tmp_path / "tuned-qa", "Emissions fall by 8 percent.", "adapter", {"minilm_cosine": 0.81234})
    write_qa_run(tmp_path / "base-qa", "Taxes.", "packaged", {})  # a metrics file written before the score existed
    out = tmp_path / "report"
    text = report.write_report([tmp_path / "tuned-qa", tmp_path / "base-qa"], out).read_text()
    t3 = text.split("## Table 3")[1].split("\n## ")[0]
    assert "| Model | Token F1 | ROUGE-L | MiniLM cosine | Exact match | n |" in t3
    rows = {line.split(" | ")[0]: line.split(" | ") for line in t3.splitlines() if line.startswith("| ") and "---" not in line}
    tuned = next(cells for label, cells in rows.items() if "LoRA" in label)
    base = next(cells for label, cells in rows.items() if "base, zero-shot" in label)
    assert tuned[3] == "0.812" and base[3] == "—"
    assert "not BERTScore" in t3
    saved = json.loads((out / "results.json").read_text())["table3"]
    assert sorted(row["minilm_cosine"] for row in saved if row["minilm_cosine"] is not None) == [0.81234]


def test_a_packaged_model_through_llama_cpp_is_a_baseline_row_not_an_export(run_dirs):
    """llama.cpp running a packaged base model's own GGUF gives Table 1 and 2 rows (labelled with the
    engine); only other GGUF files (exports) go to the export-parity section."""
    root, _, _ = run_dirs
    packaged = {"backend": "llamacpp:qwen2.5-coder-0.5b-instruct", "ref": "qwen2.5-coder-0.5b-instruct", "kind": "packaged",
                "name": "qwen2.5-coder-0.5b-instruct", "hash": None, "source_sha256": "e" * 64, "base": None,
                "exported_from_hash": None}
    few = {**model_provenance("packaged", "few-shot"), "model": packaged, "few_shot_examples": ["1", "2", "3"]}
    write_classify_run(root / "qwen-few-classify", ["econ.EM", "econ.GN", "econ.GN", "econ.GN", "econ.TH"], few)
    write_classify_run(root / "qwen-zero-classify", ["econ.EM"] * 5, {**model_provenance("packaged"), "model": packaged})
    text = report.write_report([root / "tuned-classify", root / "qwen-few-classify", root / "qwen-zero-classify"],
                               root / "report").read_text()
    t2 = text.split("## Table 2")[1].split("## The study's earlier conference abstract")[0]
    assert t2.index("GPT-4 (few-shot) | study") < t2.index("qwen2.5-coder-0.5b-instruct (3-shot, llama.cpp) | ours | 0.8000")
    assert "| qwen2.5-coder-0.5b-instruct (base, zero-shot, llama.cpp) | ours | 0.4000 |" in t2
    assert "Exported model" not in text
