"""`econlm reproduce`: the whole study in one command.

build data -> fine-tuned model (the shipped adapter, or `--train` a new one) -> evaluate title
generation and classification for the fine-tuned model, its base model zero-shot and Gemma-3-270M
one-shot, and the shipped econlm classifier (stacked on the shipped adapter; left out when the
fine-tuned model is another one, e.g. with --train) -> the baselines -> the report.

Presets:
- quick: seeded subsets (stated in the report) so the whole run fits in under 10 minutes on a
  2-core CPU; always uses the shipped adapter (training is hours on a CPU).
- full: the study's setting: every test paper, baselines trained on the full train split. It
  uses the shipped adapter too unless `--train` is given, which first fine-tunes with the
  `cpu-smollm2-lora` preset (hours on a CPU; minutes on a GPU) and evaluates that run instead.

Without a shipped adapter (and without --train) the fine-tuned rows are evaluated as missing:
the run goes on with the other rows and the report says, at the top, which rows are pending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from econlm.baselines import BaselineSettings
from econlm.errors import UserError
from econlm.models import ModelRef


@dataclass(frozen=True)
class Preset:
    name: str
    eval_limit: int | None  # test papers per language-model evaluation (None: all 350)
    baselines: BaselineSettings
    train_preset: str  # the `econlm train` preset behind --train


PRESETS = {
    # Measured here on a quiet 2-core CPU (models already converted): 7.2 minutes end to end, of
    # which language-model evaluation is 6 (about a minute per model and task at 100 papers).
    "quick": Preset(
        "quick",
        eval_limit=100,
        baselines=BaselineSettings(train_limit=1000, test_limit=100, rnn_epochs=2, minilm_epochs=1, minilm_max_len=96),
        train_preset="cpu-smollm2-lora",
    ),
    "full": Preset("full", eval_limit=None, baselines=BaselineSettings(), train_preset="cpu-smollm2-lora"),
}

BASE_MODEL = "smollm2-135m-instruct"  # the base row when there is no fine-tuned model to take it from
ONE_SHOT_MODEL = "gemma3-270m"


def _log(message: str) -> None:
    import click

    click.echo(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", err=True)


def fine_tuned_model(preset: Preset, train: bool, corpus_dir: Path, out_dir: Path) -> ModelRef | None:
    """The fine-tuned model to evaluate: a new run with --train, else the shipped adapter, else None."""
    from econlm.models import SHIPPED_ADAPTER_DIR, SHIPPED_ADAPTER_NAME

    if train:
        from econlm.config import load_config
        from econlm.training import train as train_run

        config = load_config(preset.train_preset, [f"data.corpus={corpus_dir}"])
        _log(f"training with preset {preset.train_preset} into {out_dir / 'train'}")
        return ModelRef.parse(train_run(config, out_dir / "train", preset=preset.train_preset))
    if (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
        return ModelRef.parse(SHIPPED_ADAPTER_NAME)
    _log(f"WARNING: no shipped adapter at {SHIPPED_ADAPTER_DIR}; the fine-tuned rows will be pending")
    return None


def reproduce(corpus_dir: str | Path, out_dir: str | Path, preset_name: str = "quick", train: bool = False,
              report_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Run every stage into `out_dir`; returns the report's path (report_dir, default OUT/report)."""
    from econlm.backends import EngineSpec
    from econlm.baselines import run_baselines
    from econlm.classifier import StackedClassifier, fitted_on, score_split, shipped_classifier_dir
    from econlm.data.build import build_datasets
    from econlm.evaluate import EVAL_TASKS, evaluate, load_backend
    from econlm.io import atomic_write_text
    from econlm.report import write_report

    if preset_name not in PRESETS:
        raise UserError(f"unknown preset {preset_name!r}: choose from {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    if train and preset_name == "quick":
        raise UserError("--train needs --preset full (training takes hours on a CPU; quick uses the shipped adapter)")
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    started = time.perf_counter()

    _log("building task datasets")
    build_datasets(corpus_dir, "title,classify", out_dir / "datasets", seed=seed)
    tuned = fine_tuned_model(preset, train, corpus_dir, out_dir)

    # The base row is the fine-tuned model's own base: our counterpart of the study's "LLaMA-2 (base)".
    base = tuned.base if tuned is not None else ModelRef.parse(BASE_MODEL)
    models = [(name, ref) for name, ref in (("econlm", tuned), ("base", base),
                                            ("gemma-one-shot", ModelRef.parse(ONE_SHOT_MODEL))) if ref is not None]
    run_dirs = []
    for name, ref in models:
        backend = load_backend(EngineSpec.of("transformers", ref), batch_size=16)  # loaded once for both tasks
        for task in EVAL_TASKS:
            _log(f"eval {name} ({ref}) on {task}, limit={preset.eval_limit}")
            evaluate(backend, task, corpus_dir, out_dir / "eval" / f"{name}-{task}", limit=preset.eval_limit,
                     seed=seed)
            run_dirs.append(out_dir / "eval" / f"{name}-{task}")
        if name == "econlm" and shipped_classifier_dir().is_dir():
            classifier = StackedClassifier.load(shipped_classifier_dir())
            if fitted_on(classifier, backend):
                _log(f"econlm classifier (stacked on {ref}) on classify, limit={preset.eval_limit}")
                score_split(classifier, backend, corpus_dir, "test", out_dir / "eval" / "econlm-classifier",
                            limit=preset.eval_limit, seed=seed)
                run_dirs.append(out_dir / "eval" / "econlm-classifier")
            else:
                _log(f"the shipped econlm classifier was fitted on another model than {ref}: its row is left out")
        del backend

    _log("baselines")
    run_baselines(corpus_dir, out_dir / "baselines", replace(preset.baselines, seed=seed))
    run_dirs.append(out_dir / "baselines")

    minutes = (time.perf_counter() - started) / 60
    notes = [f"`econlm reproduce --preset {preset.name}` ran every stage in {minutes:.1f} minutes."]
    if preset.eval_limit is not None:
        notes.append(f"**Subsets (quick preset):** language models on a seeded {preset.eval_limit}-paper subset of "
                     f"the test split; baselines trained on a seeded {preset.baselines.train_limit}-paper subset of "
                     f"train, scored on the same {preset.baselines.test_limit} test papers, RNN/LSTM "
                     f"{preset.baselines.rnn_epochs} epochs, MiniLM {preset.baselines.minilm_epochs} epoch at "
                     f"{preset.baselines.minilm_max_len} tokens. Numbers are noisy; use --preset full for the study.")
    if tuned is None:
        notes.append("**The fine-tuned econlm rows are pending:** no shipped adapter was found (models/) and "
                     "--train was not given, so only the base model, Gemma one-shot and the baselines were run.")
    elif train:
        notes.append(f"The fine-tuned model was trained in this run (preset {preset.train_preset}): {tuned}.")
    else:
        notes.append(f"The fine-tuned model is the shipped adapter (models/{tuned.path.name}), not retrained.")
    atomic_write_text(out_dir / "notes.md", "\n\n".join(notes) + "\n")
    report = write_report(run_dirs, report_dir or out_dir / "report",
                          title=f"econlm vs the LLaMA-2-Econ study ({preset.name} preset)", notes="\n\n".join(notes))
    _log(f"report: {report}")
    return report
