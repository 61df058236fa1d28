"""`econlm train`, `econlm merge` and `econlm bench train`: LoRA/QLoRA fine-tuning and its benchmark."""

from __future__ import annotations

from pathlib import Path

import click

from econlm.cli._base import ModelRefParam, bench, corpus_option, main


@main.command()
@click.option("--config", "config_name", default=None,
              help="Shipped preset name (configs/<name>.yaml in a checkout) or YAML path [default: cpu-smollm2-lora].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set train.max_steps=10 (repeatable; value parsed as YAML).")
@corpus_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="New run directory (adapter, checkpoints, logs).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continue the run in this directory from its latest complete checkpoint.")
def train(config_name: str | None, overrides: tuple[str, ...], corpus: Path | None, out: Path | None,
          resume_dir: Path | None) -> None:
    """Fine-tune LoRA adapters on the weighted task mix (title, classify, qa).

    Reads the corpus (--corpus, default $ECONLM_DATA; plus data.qa_file for qa) and the base model
    (and with --set model.init_adapter=PATH the adapter a second stage starts from); writes
    RUN_DIR: the best adapter by validation loss (adapter_model.safetensors), tokenizer,
    econlm_run.json (resolved config, templates, data and model hashes), metrics.json,
    train_log.jsonl, train_curve.png and resumable checkpoints/step-N/. A killed run continues
    exactly with --resume RUN_DIR.
    """
    from econlm.errors import UserError

    if resume_dir is not None:
        if config_name or overrides or out or corpus:
            raise UserError("--resume continues a run with its saved config: give no --config, --set, --corpus or --out")
        from econlm.training import resume

        run_dir = resume(resume_dir)
    else:
        if out is None:
            raise UserError("give --out RUN_DIR for a new run (or --resume RUN_DIR)")
        from econlm.config import DEFAULT_PRESET, load_config
        from econlm.training import train as train_run

        extra = [f"data.corpus={corpus}"] if corpus is not None else []
        preset = config_name or DEFAULT_PRESET
        config = load_config(preset, [*overrides, *extra])
        run_dir = train_run(config, out, preset=preset)
    click.echo(f"run directory: {run_dir} (metrics.json, train_curve.png)")


@main.command()
@click.argument("run_dir", type=ModelRefParam())
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for the merged model.")
def merge(run_dir, out: Path) -> None:
    """Merge a run's LoRA adapter into its base model.

    Reads RUN_DIR (adapter + recorded base model); writes OUT: a plain HF model folder
    (safetensors, tokenizer, econlm_merged.json provenance), replaced atomically.
    """
    from econlm.io import check_out_dir
    from econlm.training import merge_run

    check_out_dir(out)  # before the base model loads
    click.echo(f"merged model: {merge_run(run_dir, out)}")


@bench.command("train")
@corpus_option
@click.option("--examples", default=256, show_default=True,
              help="Training examples (half title, half classify; a classify-then-title preset has each pair in one sequence).")
@click.option("--steps", default=16, show_default=True, help="Optimizer steps for every contender.")
@click.option("--preset", default="cpu-smollm2-lora", show_default=True,
              help="Training preset whose model and settings every contender uses, e.g. cpu-qwen2.5-0.5b-lora.")
@click.option("--contenders", default=None,
              help="Comma-separated: A, B, C (B with bf16 autocast), econlm, glibc (econlm's trainer on glibc's "
                   "malloc). Default: all, without C where econlm trains in fp32 (no native bf16 on this CPU) "
                   "and without glibc where jemalloc is not installed.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results"), show_default=True,
              help="Result JSON file, or a directory for train-<timestamp>.json.")
def bench_train(corpus: Path | None, examples: int, steps: int, preset: str, contenders: str | None, out: Path) -> None:
    """LoRA training of a preset's model: transformers Trainer baselines vs econlm's trainer.

    Reads the corpus; runs, one after another in fresh processes on the same CPU, (A) Trainer +
    peft, fp32, every example padded to 512; (B) Trainer + peft, fp32, dynamic padding; (C) B with
    bf16 autocast, where econlm autocasts too; econlm's trainer with its defaults (on jemalloc);
    and the same on glibc's malloc. Writes the
    JSON (tokens/s, s/step, peak RSS, losses, ratios) to --out.
    """
    from econlm.bench.train import run_bench
    from econlm.cli._base import resolve_corpus

    chosen = tuple(c.strip() for c in contenders.split(",") if c.strip()) if contenders else None
    path, result = run_bench(resolve_corpus(corpus), examples=examples, steps=steps, out=out, contenders=chosen,
                             preset=preset)
    for name, row in result["contenders"].items():
        click.echo(f"{name:28s} {row['tokens_per_s']:7.1f} tok/s  {row['tokens_per_cpu_s']:6.1f} tok/cpu-s  "
                   f"{row['seconds_per_step']:6.2f} s/step  "
                   f"{row['peak_rss_mb']:7.0f} MB  train loss {row['final_train_loss']:.3f}  val loss {row['val_loss']:.3f}")
    for name, value in result["ratios"].items():
        click.echo(f"{name}: {value:.2f}")
    click.echo(f"wrote {path}")
