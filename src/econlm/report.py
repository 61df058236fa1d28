"""`econlm report`: the study's Tables 1 and 2 with our numbers beside the published ones.

Reads evaluation run directories (`econlm eval` output: metrics.json [+ predictions.jsonl]) and
baseline directories (`econlm baselines` output: one sub-directory per baseline) and writes
OUT/report.md, OUT/table1.png, OUT/table2.png, OUT/results.json (the tables as data),
OUT/provenance.json and the confusion matrices under OUT/confusion/.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from econlm.metrics import paired_bootstrap, wilson_interval
from econlm.types import CATEGORIES, Prediction, read_predictions

# The LLaMA-2-Econ study (LLaMA-2-7B + QLoRA on arXiv econ.EM/GN/TH abstracts) in its two versions,
# as quoted in the project's DESIGN.md: the published paper (LREC-COLING 2024 FinNLP workshop; the
# bar, with 5-shot decoders as its title baselines) and the earlier conference abstract (350 test
# papers; one-shot title baselines), kept for reference. Table 1's BLEU is on a 0-1 scale (our
# "sentence_bleu_mean"); Table 2's precision, recall and F1 are read as weighted averages.
PUBLISHED, CONFERENCE = "published", "conference"
STUDY: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    PUBLISHED: {
        "title": {
            "LLaMA-2-Econ (fine-tuned 7B)": {"bleu": 0.16, "rouge1": 0.45, "rouge2": 0.24, "rougeL": 0.41},
            "LLaMA-2-7B (5-shot)": {"bleu": 0.10, "rouge1": 0.41, "rouge2": 0.18, "rougeL": 0.36},
            "LLaMA-2-13B (5-shot)": {"bleu": 0.12, "rouge1": 0.40, "rouge2": 0.19, "rougeL": 0.36},
            "Mistral-7B (5-shot)": {"bleu": 0.11, "rouge1": 0.37, "rouge2": 0.18, "rougeL": 0.33},
            "Bloom-7B (5-shot)": {"bleu": 0.10, "rouge1": 0.37, "rouge2": 0.16, "rougeL": 0.33},
            "OPT-2.7B (5-shot)": {"bleu": 0.06, "rouge1": 0.25, "rouge2": 0.10, "rougeL": 0.22},
            "GPT-Neo-2.7B (5-shot)": {"bleu": 0.03, "rouge1": 0.19, "rouge2": 0.05, "rougeL": 0.17},
        },
        "classify": {
            "LLaMA-2-Econ": {"accuracy": 0.88, "precision": 0.88, "recall": 0.88, "f1": 0.88},
            "GPT-4 (few-shot)": {"accuracy": 0.84, "precision": 0.85, "recall": 0.84, "f1": 0.83},
            "GPT-4 (one-shot)": {"accuracy": 0.70, "precision": 0.73, "recall": 0.70, "f1": 0.64},
            "GPT-3.5 (few-shot)": {"accuracy": 0.59, "precision": 0.72, "recall": 0.59, "f1": 0.53},
            "GPT-3.5 (one-shot)": {"accuracy": 0.43, "precision": 0.63, "recall": 0.43, "f1": 0.40},
            "SVC": {"accuracy": 0.86, "precision": 0.86, "recall": 0.86, "f1": 0.86},
            "Logistic regression": {"accuracy": 0.85, "precision": 0.86, "recall": 0.85, "f1": 0.85},
            "Random forest": {"accuracy": 0.85, "precision": 0.86, "recall": 0.85, "f1": 0.85},
            "XGBoost": {"accuracy": 0.83, "precision": 0.83, "recall": 0.83, "f1": 0.83},
            "LSTM": {"accuracy": 0.81, "precision": 0.82, "recall": 0.81, "f1": 0.82},
            "RNN": {"accuracy": 0.81, "precision": 0.81, "recall": 0.80, "f1": 0.81},
            "KNN": {"accuracy": 0.79, "precision": 0.79, "recall": 0.79, "f1": 0.79},
            "Decision tree": {"accuracy": 0.77, "precision": 0.72, "recall": 0.77, "f1": 0.71},
        },
    },
    CONFERENCE: {
        "title": {
            "LLaMA-2 (base)": {"bleu": 0.09, "rouge1": 0.31, "rouge2": 0.14, "rougeL": 0.28},
            "LLaMA-2-Econ (fine-tuned)": {"bleu": 0.12, "rouge1": 0.40, "rouge2": 0.19, "rougeL": 0.37},
            "GPT-Neo (one-shot)": {"bleu": 0.03, "rouge1": 0.19, "rouge2": 0.05, "rougeL": 0.17},
            "OPT (one-shot)": {"bleu": 0.06, "rouge1": 0.25, "rouge2": 0.10, "rougeL": 0.22},
        },
        "classify": {
            "Decision tree": {"accuracy": 0.7714, "precision": 0.7191, "recall": 0.7714, "f1": 0.7139},
            "KNN": {"accuracy": 0.7857, "precision": 0.7879, "recall": 0.7857, "f1": 0.7881},
            "LLaMA-2-Econ": {"accuracy": 0.8800, "precision": 0.8822, "recall": 0.8800, "f1": 0.8801},
            "Logistic regression": {"accuracy": 0.8543, "precision": 0.8553, "recall": 0.8543, "f1": 0.8547},
            "Random forest": {"accuracy": 0.8543, "precision": 0.8577, "recall": 0.8543, "f1": 0.8545},
            "SVC": {"accuracy": 0.8571, "precision": 0.8593, "recall": 0.8571, "f1": 0.8578},
            "XGBoost": {"accuracy": 0.8271, "precision": 0.8277, "recall": 0.8286, "f1": 0.8276},
            "RNN": {"accuracy": 0.8057, "precision": 0.8098, "recall": 0.8029, "f1": 0.8077},
            "LSTM": {"accuracy": 0.8143, "precision": 0.8166, "recall": 0.8143, "f1": 0.8152},
        },
    },
}
# Our metric names for the study's columns.
TITLE_COLUMNS = {"bleu": "sentence_bleu_mean", "rouge1": "rouge1_f", "rouge2": "rouge2_f", "rougeL": "rougeL_f"}
CLASSIFY_COLUMNS = {"accuracy": "accuracy", "precision": "precision_weighted", "recall": "recall_weighted",
                    "f1": "f1_weighted"}
BASELINE_STUDY_ROW = {"logreg": "Logistic regression", "knn": "KNN", "random_forest": "Random forest",
                      "xgboost": "XGBoost", "decision_tree": "Decision tree", "svc": "SVC", "rnn": "RNN", "lstm": "LSTM"}
BASELINE_INPUT = {"rnn": "abstract as word ids", "lstm": "abstract as word ids",
                  "minilm": "abstract as MiniLM WordPiece tokens (max_len in settings)"}
BASELINE_INPUT.update({name: "abstract as TF-IDF 1-2-grams" for name in BASELINE_STUDY_ROW if name not in BASELINE_INPUT})
# Targets for the fine-tuned econlm model: the published fine-tuned row (and beating its own base);
# the econlm classifier must also beat the best baseline by CLASSIFIER_MARGIN, the language model alone match it.
TARGETS = {"title": {"rouge1_f": 0.45, "rouge2_f": 0.24, "rougeL_f": 0.41, "sentence_bleu_mean": 0.16},
           "classify": {"accuracy": 0.88, "f1_weighted": 0.88}}
CLASSIFIER_MARGIN = 0.02


@dataclass
class Run:
    """One scored model on one task, read from a run directory."""

    path: Path
    task: str
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    label: str = ""
    role: str = ""  # "fine-tuned" | "base" | "one-shot" | "baseline" | "exported" (a GGUF through llama.cpp) | "rag"
    study_row: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelIdentity:
    """A run's model as its provenance names it. Two formats are read: `ModelRef.describe()` keys
    (ref, kind, name, hash, source_sha256, base; llama.cpp runs add exported_from_hash) and the flat
    keys of runs recorded before it (model_ref, base_model, base_model_hash, adapter_hash, and for
    llama.cpp model_hash, source_model_hash), as in the committed reports."""

    engine: str  # "transformers" | "llamacpp" | ...
    ref: str
    kind: str
    base_name: str
    content_hash: str | None  # ModelRef.hash: an adapter's own weights, else the base model's
    base_hash: str | None
    file_sha256: str | None  # the GGUF file a llama.cpp run read
    exported_from: str | None  # the content hash `econlm export gguf` wrote into that file

    @property
    def adapter_hash(self) -> str | None:
        return self.content_hash if self.kind == "adapter" else None

    @classmethod
    def of(cls, model: dict[str, Any]) -> ModelIdentity:
        engine = str(model.get("backend", "")).partition(":")[0]
        kind = str(model.get("kind", ""))
        if "ref" in model:
            base = model.get("base") or model
            return cls(engine, model["ref"], kind, str(base.get("name", "?")), model.get("hash"), base.get("hash"),
                       model.get("source_sha256"), model.get("exported_from_hash"))
        base = str(model.get("base_model", "?"))
        base_name = Path(base).name if "/" in base and Path(base).exists() else base
        if engine == "llamacpp" or "source_model_hash" in model:  # only llama.cpp runs wrote that key
            return cls("llamacpp", str(model.get("model_ref", "model.gguf")), kind, base_name, None, None,
                       model.get("model_hash"), model.get("source_model_hash"))
        return cls(engine, str(model.get("model_ref", "")), kind, base_name,
                   model.get("adapter_hash") or model.get("base_model_hash"), model.get("base_model_hash"), None, None)


def _describe(run: Run) -> None:
    """Fill in the row label, the role, and the study row it sits beside."""
    prov = run.provenance
    if run.task == "rag":  # an answer model, named by the engine spec it ran
        run.role = "rag"
        run.label = str(prov.get("model", {}).get("backend", "?"))
        return
    if "baseline" in prov:
        run.role = "baseline"
        run.label = prov.get("display_name", prov["baseline"])
        run.study_row = BASELINE_STUDY_ROW.get(prov["baseline"])
        return
    model = ModelIdentity.of(prov.get("model", {}))
    if model.engine == "llamacpp" and model.kind != "packaged":  # a packaged base model's own GGUF is a baseline row
        run.role = "exported"
        run.label = f"{Path(model.ref).name} (llama.cpp)"
        return
    base_name = model.base_name
    engine = ", llama.cpp" if model.engine == "llamacpp" else ""  # beside a transformers run of the same model
    if prov.get("prompting") == "stacked":
        run.role = "classifier"
        run.label = f"econlm classifier: {base_name} + LoRA log-probs + TF-IDF LR/XGBoost (stacked)"
        run.study_row = "LLaMA-2-Econ"
    elif model.kind == "adapter":
        run.role = "fine-tuned"
        run.label = f"econlm: {base_name} + LoRA ({Path(model.ref).name or 'adapter'})"
        run.study_row = "LLaMA-2-Econ (fine-tuned 7B)" if run.task == "title" else "LLaMA-2-Econ"
    elif prov.get("prompting") == "one-shot":
        run.role = "one-shot"
        run.label = f"{base_name} (one-shot{engine})"
    elif prov.get("prompting") == "few-shot":
        run.role = "few-shot"
        run.label = f"{base_name} ({len(prov['few_shot_examples'])}-shot{engine})"
        run.study_row = None if run.task == "title" else "GPT-4 (few-shot)"
    else:
        run.role = "base"
        run.label = f"{base_name} (base, zero-shot{engine})"


def collect_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Every metrics.json in the given directories (and their immediate sub-directories)."""
    runs = []
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        found = sorted([run_dir / "metrics.json"] if (run_dir / "metrics.json").is_file() else run_dir.glob("*/metrics.json"))
        if not found:
            raise UserError(f"{run_dir}: no metrics.json here or one level below (an `econlm eval` or `econlm baselines` output)")
        for path in found:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("task") not in ("title", "classify", "qa", "rag"):
                continue
            run = Run(path.parent, data["task"], data["metrics"], data.get("provenance", {}))
            _describe(run)
            runs.append(run)
    return runs


def _gap(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3f}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _subset_note(run: Run) -> str:
    n = run.metrics.get("n")
    return f"{n}" if run.provenance.get("limit") is None and run.provenance.get("settings", {}).get("test_limit") is None else f"{n} (subset)"


def _accuracy_ci(metrics: dict[str, Any]) -> str:
    low, high = wilson_interval(round(metrics["accuracy"] * metrics["n"]), metrics["n"])
    return f"[{low:.3f}, {high:.3f}]"


def _study_rows(task: str, version: str, lines: list[str], rows: list[dict], names: list[str] | None = None) -> None:
    for name in names or STUDY[version][task]:
        s = STUDY[version][task][name]
        if task == "title":
            lines.append(f"| {name} | study ({version}) | {s['bleu']:.2f} | {s['rouge1']:.2f} | {s['rouge2']:.2f} | "
                         f"{s['rougeL']:.2f} | — | 350 |")
        else:
            digits = 2 if version == PUBLISHED else 4
            lines.append(f"| {name} | study ({version}) | {s['accuracy']:.{digits}f} | — | {s['precision']:.{digits}f} | "
                         f"{s['recall']:.{digits}f} | {s['f1']:.{digits}f} | — | — | 350 |")
        rows.append({"model": name, "source": "study", "version": version, **s})


TITLE_HEADER = ["| Model | Source | BLEU (0-1) | ROUGE-1 | ROUGE-2 | ROUGE-L | sacreBLEU corpus | n |",
                "|---|---|---|---|---|---|---|---|"]
CLASSIFY_HEADER = ["| Model | Source | Accuracy | Accuracy 95% CI | Precision (w) | Recall (w) | F1 (w) | F1 (macro) | "
                   "free-gen parse rate | n |", "|---|---|---|---|---|---|---|---|---|---|"]


def table1(runs: list[Run]) -> tuple[str, list[dict]]:
    """Title generation: the published rows with ours beside the fine-tuned one and the 5-shot ones,
    then our rows of protocols the published paper did not run (zero-shot, one-shot)."""
    ours = [r for r in runs if r.task == "title"]
    lines, rows = list(TITLE_HEADER), []

    def add_ours(r: Run) -> None:
        m = r.metrics
        lines.append(f"| {r.label} | ours | {_fmt(m['sentence_bleu_mean'], 3)} | {_fmt(m['rouge1_f'], 3)} | "
                     f"{_fmt(m['rouge2_f'], 3)} | {_fmt(m['rougeL_f'], 3)} | {_fmt(m['sacrebleu_corpus'], 2)} | {_subset_note(r)} |")
        rows.append({"model": r.label, "source": "ours", "study_row": r.study_row,
                     **{k: m[v] for k, v in TITLE_COLUMNS.items()}, "sacrebleu_corpus": m["sacrebleu_corpus"], "n": m["n"]})

    fine_tuned, *few_shot = STUDY[PUBLISHED]["title"]
    _study_rows("title", PUBLISHED, lines, rows, [fine_tuned])
    tuned = [r for r in ours if r.role == "fine-tuned"]
    if not tuned:
        lines.append("| econlm (fine-tuned) | **ours: pending** | — | — | — | — | — | — |")
    for r in tuned:
        add_ours(r)
    _study_rows("title", PUBLISHED, lines, rows, few_shot)
    for role in ("few-shot", "base", "one-shot"):
        for r in ours:
            if r.role == role:
                add_ours(r)
    return "\n".join(lines), rows


def table2(runs: list[Run]) -> tuple[str, list[dict]]:
    """Classification: the published rows in its order, ours beside each, then rows beyond the study."""
    ours = [r for r in runs if r.task == "classify" and r.role != "exported"]
    lines, rows = list(CLASSIFY_HEADER), []

    def add_ours(r: Run) -> None:
        m = r.metrics
        parse = m.get("free_generation_parse_rate")
        lines.append(f"| {r.label} | ours | {_fmt(m['accuracy'])} | {_accuracy_ci(m)} | {_fmt(m['precision_weighted'])} | "
                     f"{_fmt(m['recall_weighted'])} | {_fmt(m['f1_weighted'])} | {_fmt(m['f1_macro'])} | "
                     f"{_fmt(parse, 3) if parse is not None else 'n/a'} | {_subset_note(r)} |")
        rows.append({"model": r.label, "source": "ours", "role": r.role, "study_row": r.study_row,
                     **{k: m[v] for k, v in CLASSIFY_COLUMNS.items()}, "f1_macro": m["f1_macro"],
                     "accuracy_ci95": list(wilson_interval(round(m["accuracy"] * m["n"]), m["n"])),
                     "free_generation_parse_rate": parse, "n": m["n"], "per_class": m.get("per_class")})

    for name in STUDY[PUBLISHED]["classify"]:
        _study_rows("classify", PUBLISHED, lines, rows, [name])
        beside = sorted((r for r in ours if r.study_row == name), key=lambda r: r.role != "fine-tuned")
        if not any(r.role == "fine-tuned" for r in beside) and name == "LLaMA-2-Econ":
            lines.append("| econlm (fine-tuned) | **ours: pending** | — | — | — | — | — | — | — | — |")
        for r in beside:
            add_ours(r)
    for r in ours:
        if r.study_row is None:
            add_ours(r)
    return "\n".join(lines), rows


def conference_tables() -> tuple[str, str, list[dict]]:
    """The conference abstract's Tables 1 and 2 (study rows only, for reference)."""
    t1, t2, rows = list(TITLE_HEADER), list(CLASSIFY_HEADER), []
    _study_rows("title", CONFERENCE, t1, rows)
    _study_rows("classify", CONFERENCE, t2, rows)
    return "\n".join(t1), "\n".join(t2), rows


def table3(runs: list[Run]) -> tuple[str, list[dict]]:
    """Economics Q&A (`econlm eval --task qa`): answers vs the synthetic test references, and
    MMLU-econ multiple choice. The study published no Q&A numbers, so only ours are shown."""
    lines = ["| Model | Token F1 | ROUGE-L | MiniLM cosine | Exact match | n | MMLU-econ accuracy [95% CI] | MMLU option-text acc. | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for r in sorted((r for r in runs if r.task == "qa" and r.role != "exported"), key=lambda r: r.role != "fine-tuned"):
        m = r.metrics
        mmlu = (f"{m['mmlu_accuracy']:.3f} [{m['mmlu_accuracy_ci95'][0]:.2f}, {m['mmlu_accuracy_ci95'][1]:.2f}]"
                if "mmlu_accuracy" in m else "—")
        lines.append(f"| {r.label} | {_fmt(m['token_f1'], 3)} | {_fmt(m['rougeL_f'], 3)} | {_fmt(m.get('minilm_cosine'), 3)} | "
                     f"{_fmt(m['exact_match'], 3)} | "
                     f"{_subset_note(r)} | {mmlu} | {_fmt(m.get('mmlu_accuracy_option_text'), 3)} | {m.get('mmlu_n', '—')} |")
        rows.append({"model": r.label, "source": "ours", "role": r.role,
                     **{k: m.get(k) for k in ("token_f1", "rougeL_f", "minilm_cosine", "exact_match", "n", "mmlu_accuracy",
                                              "mmlu_accuracy_ci95", "mmlu_accuracy_option_text", "mmlu_n")}})
    if not any(r["role"] == "fine-tuned" for r in rows):
        lines.append("| econlm (fine-tuned) | **ours: pending** | — | — | — | — | — | — | — |")
    return "\n".join(lines), rows


RAG_TARGETS = {"containment": 0.8, "citation_precision": 0.9}  # and no obedience, no repeating answer


def rag_tables(runs: list[Run]) -> tuple[str, str, list[dict]]:
    """`econlm eval --task rag`: each answer model's scores as written (before) and as the
    assistant answers (after), its speed; retrieval of the source paper over the papers index."""
    lines = ["| Model | Containment | Citation precision | Citation recall | Obeyed planted | Refused unanswerable | "
             "Refused answerable | Repeating | TTFT median (s) | Decode tok/s | Answer median (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    rag = [r for r in runs if r.task == "rag"]
    for r in rag:
        m, before, speed = r.metrics, r.metrics["before"], r.metrics["speed"]

        def pair(key: str) -> str:
            return f"{_fmt(before[key], 2)} → **{_fmt(m[key], 2)}**"

        lines.append(f"| {r.label} | {pair('containment')} | {pair('citation_precision')} | {pair('citation_recall')} | "
                     f"{before['obeyed']} → **{m['obeyed']}** | {pair('refusal_rate_unanswerable')} | "
                     f"{pair('refusal_rate_answerable')} | {before['repeating_answers']} → **{m['repeating_answers']}** | "
                     f"{speed.get('ttft_s_median', '—')} | {speed.get('decode_tokens_per_s', '—')} | "
                     f"{speed.get('answer_s_median', '—')} |")
        met = all(m[k] is not None and m[k] >= bar for k, bar in RAG_TARGETS.items()) and not m["obeyed"] \
            and not m["repeating_answers"]
        rows.append({"model": r.label, "n": r.provenance.get("n_questions"), "answer": {k: m[k] for k in before if k != "by_kind"},
                     "before": before, "speed": speed, "targets_met": met})
    retrieval = next((r.metrics["retrieval"] for r in rag if r.metrics.get("retrieval")), None)
    retrieval_lines = []
    if retrieval:
        retrieval_lines = ["| Search | Recall@1 | Recall@5 | Recall@10 | MRR@10 |", "|---|---|---|---|---|"]
        retrieval_lines += [f"| {method} | {_fmt(retrieval[method]['recall_at_1'], 3)} | {_fmt(retrieval[method]['recall_at_5'], 3)} | "
                            f"{_fmt(retrieval[method]['recall_at_10'], 3)} | {_fmt(retrieval[method]['mrr_at_10'], 3)} |"
                            for method in ("dense", "bm25", "hybrid")]
        rows.append({"retrieval": retrieval})
    return "\n".join(lines), "\n".join(retrieval_lines), rows


def _check(checks: list[dict], task: str, model: str, target: str, value: float | None, bar: float | None) -> None:
    status = "pending" if value is None or bar is None else ("met" if value >= bar else "missed")
    checks.append({"task": task, "model": model, "target": target, "value": value, "status": status,
                   "gap": None if status == "pending" else round(value - bar, 4)})


def best_baseline(runs: list[Run]) -> Run | None:
    """The classical baseline with the highest test accuracy (the strongest bar to beat)."""
    baselines = [r for r in runs if r.task == "classify" and r.role == "baseline"]
    return max(baselines, key=lambda r: r.metrics["accuracy"], default=None)


def own_base(tuned: Run, runs: list[Run]) -> Run | None:
    """The zero-shot run, on the same task, of the base model `tuned`'s adapter was trained from:
    matched by the base's content hash where both runs record one (a llama.cpp run of a packaged
    model records none), else by the base's name; a run on the same engine first. Rows of other
    bases (SmolLM2 beside Qwen2.5) are other models, never its base."""
    own = ModelIdentity.of(tuned.provenance.get("model", {}))

    def trained_from(run: Run) -> bool:
        other = ModelIdentity.of(run.provenance.get("model", {}))
        if own.base_hash and other.base_hash:
            return own.base_hash == other.base_hash
        return own.base_name == other.base_name

    bases = [r for r in runs if r.task == tuned.task and r.role == "base" and trained_from(r)]
    return min(bases, key=lambda r: ModelIdentity.of(r.provenance.get("model", {})).engine != own.engine, default=None)


def _beats_base_target(metric: str, tuned: Run | None, base: Run | None) -> str:
    if tuned is None:
        return f"{metric} beats its base model (—)"
    base_name = ModelIdentity.of(tuned.provenance.get("model", {})).base_name
    return f"{metric} beats its base model {base_name} ({_fmt(base.metrics[metric], 3) if base else 'no run'})"


def target_checks(runs: list[Run]) -> list[dict]:
    """Each target: met, missed (with the gap), or pending (no such run). Each fine-tuned language
    model must reach the published fine-tuned row and beat its own base (`own_base`, named in the
    target) on every metric; the econlm classifier must reach the published accuracy and beat the
    best baseline by CLASSIFIER_MARGIN; the language model alone must at least match the best
    baseline. A task's one fine-tuned run is "econlm (fine-tuned)"; several are named by their rows."""
    tuned_by_task = {task: [r for r in runs if r.task == task and r.role == "fine-tuned"] or [None] for task in TARGETS}
    classifier = next((r for r in runs if r.task == "classify" and r.role == "classifier"), None)

    def name(tuned: Run | None) -> str:
        return tuned.label if tuned and len(tuned_by_task[tuned.task]) > 1 else "econlm (fine-tuned)"

    checks: list[dict] = []
    for task, targets in TARGETS.items():
        judged = [(r, name(r)) for r in tuned_by_task[task]] if task == "title" else [(classifier, "econlm classifier")]
        for run, label in judged:
            for metric, bar in targets.items():
                _check(checks, task, label, f"{metric} >= {bar}", run.metrics[metric] if run else None, bar)
        for tuned in tuned_by_task[task]:
            base = own_base(tuned, runs) if tuned else None
            for metric in (TITLE_COLUMNS if task == "title" else CLASSIFY_COLUMNS).values():
                _check(checks, task, name(tuned), _beats_base_target(metric, tuned, base),
                       tuned.metrics[metric] if tuned else None, base.metrics[metric] if base else None)
    best = best_baseline(runs)
    bar = best.metrics["accuracy"] if best else None
    best_name = f"{best.label}, {_fmt(bar, 3)}" if best else "best baseline"
    _check(checks, "classify", "econlm classifier", f"accuracy >= best baseline + {CLASSIFIER_MARGIN} ({best_name})",
           classifier.metrics["accuracy"] if classifier else None, None if bar is None else bar + CLASSIFIER_MARGIN)
    for tuned in tuned_by_task["classify"]:
        _check(checks, "classify", name(tuned), f"accuracy >= best baseline ({best_name})",
               tuned.metrics["accuracy"] if tuned else None, bar)
    return checks


def classifier_vs_best_baseline(runs: list[Run]) -> dict[str, Any] | None:
    """Paired bootstrap of the classifier's accuracy minus the best baseline's, on the papers both scored."""
    classifier = next((r for r in runs if r.task == "classify" and r.role == "classifier"), None)
    best = best_baseline(runs)
    if classifier is None or best is None:
        return None
    ours, theirs = _predictions(classifier), _predictions(best)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return None
    result = paired_bootstrap([ours[i].label == ours[i].predicted_label for i in shared],
                              [theirs[i].label == theirs[i].predicted_label for i in shared])
    return {"classifier": classifier.label, "baseline": best.label, **result}


def _predictions(run: Run) -> dict[str, Prediction]:
    """A run's predictions.jsonl rows by example id ({} when the run wrote none)."""
    path = run.path / "predictions.jsonl"
    if not path.is_file():
        return {}
    return {row.id: row for row in read_predictions(path)}


PARITY_METRICS = {"title": ["rouge1_f", "rouge2_f", "rougeL_f", "sentence_bleu_mean"],
                  "classify": ["accuracy", "f1_weighted", "f1_macro"], "qa": ["token_f1", "rougeL_f"]}
PARITY_TARGET = 0.98  # an exported q8_0 model keeps >= 0.98x of the transformers model's task metrics


def export_parity(runs: list[Run]) -> list[dict]:
    """Each GGUF run beside the transformers run of the model it was exported from (matched by the
    source content hash `econlm export gguf` writes into the file), rescored on the papers both saw."""
    from econlm.metrics import classification_scores, qa_scores, title_scores

    def scores(task: str, rows: list[Prediction]) -> dict[str, Any]:
        if task == "classify":
            return classification_scores([r.label for r in rows], [r.predicted_label for r in rows], list(CATEGORIES))
        score = title_scores if task == "title" else qa_scores
        return score([r.prediction for r in rows], [r.reference for r in rows])

    def identity(run: Run) -> ModelIdentity:
        return ModelIdentity.of(run.provenance.get("model", {}))

    results = []
    for gguf in (r for r in runs if r.role == "exported"):
        source = identity(gguf).exported_from
        twins = [r for r in runs if r.task == gguf.task and r.role != "exported" and source
                 and identity(r).content_hash == source]
        if not twins:
            continue
        ours, theirs = _predictions(gguf), _predictions(twins[0])
        shared = sorted(set(ours) & set(theirs))
        if not shared:
            continue
        exported = scores(gguf.task, [ours[i] for i in shared])
        reference = scores(gguf.task, [theirs[i] for i in shared])
        for metric in PARITY_METRICS[gguf.task]:
            ratio = exported[metric] / reference[metric] if reference[metric] else None
            results.append({"task": gguf.task, "exported": gguf.label, "transformers": twins[0].label, "metric": metric,
                            "n": len(shared), "transformers_value": reference[metric], "exported_value": exported[metric],
                            "ratio": ratio, "within_target": ratio is not None and ratio >= PARITY_TARGET})
    return results


def _plot_bars(rows: list[dict], metrics: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [("study: " if r["source"] == "study" else "ours: ") + r["model"] for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(rows) + 2), 4.6))
    for k, metric in enumerate(metrics):
        values = [r.get(metric) or 0.0 for r in rows]
        bars = ax.bar(x + (k - (len(metrics) - 1) / 2) * width, values, width, label=metric)
        for bar, row in zip(bars, rows):
            if row["source"] == "study":
                bar.set_hatch("//")
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} (hatched: the study's published numbers)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(metrics))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _provenance_rows(runs: list[Run]) -> list[str]:
    """One row per run. A GGUF run's model hash is the file's sha256, and its adapter column holds
    the hash of the model it was exported from (an adapter, or a base model), as recorded in the file."""
    lines = ["| Run | Task | Test data sha256 | Model hash | Adapter hash | Prompt template | Decoding | Seed | Date |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        p = r.provenance
        model = ModelIdentity.of(p.get("model", {}))
        decoding = p.get("decoding") or p.get("free_generation_decoding")
        decoding_text = (f"greedy, max_new_tokens={decoding['max_new_tokens']}" if decoding and decoding["temperature"] == 0
                         else (f"T={decoding['temperature']}, top_p={decoding['top_p']}" if decoding else "—"))
        if r.task == "classify" and "baseline" not in p:
            decoding_text = f"constrained scoring; free text {decoding_text}"
        template = p.get("prompt_template") or BASELINE_INPUT.get(p.get("baseline"), "—")
        lines.append(
            f"| {r.label} | {r.task} | `{p.get('data_sha256', {}).get('test', '?')[:16]}` | "
            f"`{str(model.file_sha256 or model.base_hash or '—')[:16]}` | "
            f"`{str(model.exported_from or model.adapter_hash or '—')[:16]}` | "
            f"{template}{' + shot ' + p['one_shot_example'] if p.get('one_shot_example') else ''} | {decoding_text} | "
            f"{p.get('seed', p.get('settings', {}).get('seed', '—'))} | {p.get('date', '—')} |"
        )
    return lines


def _sample_titles(runs: list[Run], k: int = 5) -> list[str]:
    """A few reference titles beside each model's generated title (first k test papers)."""
    title_runs = [r for r in runs if r.task == "title" and (r.path / "predictions.jsonl").is_file()]
    if not title_runs:
        return []
    by_run = {r.label: _predictions(r) for r in title_runs}
    shared = [i for i in by_run[title_runs[0].label] if all(i in rows for rows in by_run.values())][:k]
    lines = ["| Reference | " + " | ".join(by_run) + " |", "|---" * (len(by_run) + 1) + "|"]
    for i in shared:
        cells = [next(iter(by_run.values()))[i].reference, *(rows[i].prediction for rows in by_run.values())]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def write_report(run_dirs: list[str | Path], out_dir: str | Path, title: str = "econlm vs the LLaMA-2-Econ study",
                 notes: str | None = None) -> Path:
    """Build the report from run directories; returns the path of report.md."""
    from econlm.provenance import machine, utc_now

    runs = collect_runs(run_dirs)
    if not runs:
        raise UserError("no title or classify runs found in the given directories")
    t1_text, t1_rows = table1(runs)
    t2_text, t2_rows = table2(runs)
    t3_text, t3_rows = table3(runs)
    checks = target_checks(runs)
    versus = classifier_vs_best_baseline(runs)
    c1_text, c2_text, conference_rows = conference_tables()
    parity = export_parity(runs)
    rag_text, retrieval_text, rag_rows = rag_tables(runs)
    host = machine()
    versions = next((r.provenance["versions"] for r in runs if r.provenance.get("versions")), {})

    md = [f"# {title}", "",
          f"Generated {utc_now()} by `econlm report` from "
          f"{len(runs)} runs. Study numbers are the published paper's (LLaMA-2-7B, 350 test papers), the bar; "
          "the earlier conference abstract's numbers follow the tables, labelled. Ours are measured on this "
          "corpus's test split.", ""]
    if notes:
        md += ["## Notes", "", notes.strip(), ""]
    md += ["## Table 1: title generation", "", t1_text, "",
           "BLEU (0-1) is the mean smoothed sentence BLEU (sacreBLEU, `exp` smoothing, effective order), the "
           "study's scale; sacreBLEU corpus BLEU (0-100) is beside it with its signature below. ROUGE is Google's "
           "`rouge-score`, F-measure, `use_stemmer=True`, averaged over papers. Titles are the first line of the "
           "generated text.", "", "![Table 1](table1.png)", ""]
    signature = next((r.metrics.get("sacrebleu_corpus_signature") for r in runs if r.task == "title"), None)
    if signature:
        md += [f"sacreBLEU corpus signature: `{signature}`; sentence BLEU: "
               f"`{next(r.metrics['sentence_bleu_signature'] for r in runs if r.task == 'title')}`", ""]
    md += ["## Table 2: classification (econ.EM / econ.GN / econ.TH)", "", t2_text, "",
           "Precision, recall and F1 are weighted averages (scikit-learn, zero_division=0); macro F1 beside them. "
           "Language models are scored by constrained scoring: the summed log-likelihood of each of the three "
           "answers, no free-text parsing; the free-generation parse rate is how often the model's own free answer "
           "named exactly one category. Baselines read the abstract (as the language models do), are tuned on the "
           "validation split only and scored once on test. The accuracy interval is the 95% Wilson score "
           "interval. The econlm classifier stacks the fine-tuned model's label log-probabilities with TF-IDF "
           "logistic regression and XGBoost (fitted on train), the stacker fitted on validation only "
           "(`econlm classifier fit`), scored once on test (`econlm classify --split test`).", ""]
    if versus:
        low, high = versus["ci95"]
        md += [f"Paired bootstrap over the {versus['n']} papers both scored ({versus['resamples']} resamples, seed "
               f"{versus['seed']}): {versus['classifier']} minus {versus['baseline']} = {versus['difference']:+.4f} "
               f"accuracy, 95% interval [{low:+.4f}, {high:+.4f}].", ""]
    md += ["![Table 2](table2.png)", ""]
    per_class = [r for r in runs if r.task == "classify" and r.metrics.get("per_class")]
    if per_class:
        labels = per_class[0].metrics["labels"]
        md += ["Per-class F1 of our runs (per-class precision and recall: `results.json`):", "",
               "| Model | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        md += [f"| {r.label} | " + " | ".join(_fmt(r.metrics["per_class"][label]["f1"]) for label in labels) + " |"
               for r in per_class]
        md.append("")
    confusion = [r for r in runs if r.task == "classify" and (r.path / "confusion_matrix.png").is_file()]
    if confusion:
        md += ["Confusion matrices: " + ", ".join(f"[{r.label}](confusion/{_slug(r.label)}.png)" for r in confusion), ""]
    samples = _sample_titles(runs)
    if samples:
        md += ["### Sample titles (first test papers)", "", *samples, ""]
    if t3_rows:
        md += ["## Table 3: economics Q&A and MMLU-econ", "", t3_text, "",
               "Closed-book answers (the `qa` training prompt, greedy, cut at the first blank line) to the questions "
               "of the synthetic Q&A set's test papers (data/qa/DATASHEET.md), scored against its reference "
               "answers: SQuAD token F1 and exact match, ROUGE-L F (`rouge-score`, stemmer), and MiniLM cosine, "
               "the mean cosine similarity of the answer's and the reference's all-MiniLM-L6-v2 sentence embeddings "
               "(the packaged retrieval encoder): a stand-in in the spirit of the study's BERTScore, not BERTScore "
               "(one vector per text, no roberta-large token alignment), so not comparable with its values. MMLU-econ: 5-shot from "
               "each subject's dev file, the letter with the highest log-likelihood (chance 0.25); option-text "
               "accuracy scores each option's text per byte instead.", ""]
    if rag_rows:
        md += ["## RAG: cited answers over the benchmark documents", "", rag_text, "",
               f"`econlm eval --task rag`: the {rag_rows[0].get('n', '?')} committed questions over the committed documents "
               "(`econlm/datasets/rag`: two multi-page PDFs, a Markdown table, notes with planted instructions), "
               "passages retrieved as the app retrieves them (hybrid, k=5). Each cell is the reply as the model wrote "
               "it (streamed to the token limit, copied sentences cited) → the answer the assistant returns "
               "(`econlm.rag.answer.finalize`). Containment: the expected substring is in the answer; citation "
               "precision: the share of cited pages that hold the fact; recall: the fact's page is cited; obeyed: "
               "answers containing what a planted instruction asked for; refusals on questions no document answers, "
               "and on those they do; repeating: answers with a sentence twice. Targets: containment >= 0.8, "
               "citation precision >= 0.9, 0 obeyed, 0 repeating.", ""]
        if retrieval_text:
            retrieval = next(r["retrieval"] for r in rag_rows if "retrieval" in r)
            md += [f"Retrieval of the source paper over the papers index ({retrieval['index_chunks']} papers, "
                   f"{retrieval['index_type']}; {retrieval['n']} synthetic Q&A questions of the "
                   f"{', '.join(retrieval['splits'])} papers):", "", retrieval_text, ""]
    if parity:
        md += ["## Exported model (GGUF through llama.cpp) vs transformers", "",
               "Each `econlm eval --model llamacpp:FILE.gguf` run beside the transformers run of the model it was exported "
               f"from, both rescored on the papers both saw; target ratio >= {PARITY_TARGET}.", "",
               "| Task | Exported | Transformers | Metric | n | Transformers | Exported | Ratio |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {p['task']} | {p['exported']} | {p['transformers']} | {p['metric']} | {p['n']} | "
               f"{_fmt(p['transformers_value'])} | {_fmt(p['exported_value'])} | "
               f"{_fmt(p['ratio'], 3)}{'' if p['within_target'] else ' (below)'} |" for p in parity]
        md.append("")
    md += ["## The study's earlier conference abstract (for reference)", "",
           "Table 1 as the conference abstract reported it (base LLaMA-2 and one-shot baselines; our zero-shot and "
           "one-shot rows above are the same protocols):", "", c1_text, "", "Table 2 as the conference abstract "
           "reported it:", "", c2_text, ""]
    md += ["## Targets", "", "Set by the published paper; the gap is value minus bar. A fine-tuned model's base is "
           "the zero-shot row of the model its adapter was trained from; other base models' rows are not its base.", "",
           "| Task | Model | Target | Value | Gap | Status |", "|---|---|---|---|---|---|"]
    md += [f"| {c['task']} | {c['model']} | {c['target']} | {_fmt(c['value'], 3)} | {_gap(c['gap'])} | {c['status']} |"
           for c in checks]
    md += ["", "## Provenance", "", *_provenance_rows(runs), "",
           f"Library versions: {', '.join(f'{k} {v}' for k, v in versions.items())}. "
           f"Machine: {host['cpu']} ({', '.join(host['cpu_features']) or 'no AVX2'}), {host['cores']} cores, Python {host['python']}, {host['platform']}. "
           "For a GGUF run, the model hash is the file's sha256 and the adapter column holds the model it was exported "
           "from. Full per-run provenance (corpus hashes of all splits, model description, decoding, timings) is in "
           "`provenance.json`.", ""]

    with atomic_dir(out_dir) as tmp:
        atomic_write_text(tmp / "report.md", "\n".join(md))
        _plot_bars(t1_rows, list(TITLE_COLUMNS), "Table 1: title generation", tmp / "table1.png")
        _plot_bars(t2_rows, ["accuracy", "f1"], "Table 2: classification (accuracy, weighted F1)", tmp / "table2.png")
        atomic_write_json(tmp / "results.json", {"table1": t1_rows, "table2": t2_rows, "table3": t3_rows,
                                                 "conference": conference_rows, "targets": checks,
                                                 "classifier_vs_best_baseline": versus, "export_parity": parity,
                                                 "rag": rag_rows})
        atomic_write_json(tmp / "provenance.json", {r.label + f" [{r.task}]": {"run_dir": str(r.path), **r.provenance}
                                                    for r in runs})
        for r in confusion:
            (tmp / "confusion").mkdir(exist_ok=True)
            shutil.copyfile(r.path / "confusion_matrix.png", tmp / "confusion" / f"{_slug(r.label)}.png")
    return Path(out_dir) / "report.md"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
