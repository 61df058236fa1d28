"""`econlm bench train`: LoRA training throughput of econlm's trainer against two transformers
`Trainer` set-ups, on the same model, examples, step count and CPU. The model and econlm's
settings are a training preset's (`cpu-smollm2-lora`, SmolLM2-135M, by default; the Qwen preset's
classify-then-title sequences are then every contender's examples).

Contenders (each in a fresh process, one after another, so peak RSS is per contender):
  A  Trainer + peft LoRA, fp32, every example padded to 512 tokens (the common QLoRA-notebook set-up)
  B  Trainer + peft LoRA, fp32, dynamic padding to the longest example in the batch
  C  B with Trainer's bf16 autocast (`bf16=True`), run where econlm's preset itself autocasts to
     bf16 (a CPU with native bf16 dot products): there A and B's fp32 leaves part of econlm's lead
     to a setting any Trainer user can switch on, and C is the comparison that isolates the trainer
  econlm  `econlm.training.train` with the preset's settings, on jemalloc (econlm.allocator)
  econlm on glibc malloc  the same trainer on the system allocator: what jemalloc buys, which
          grows with the number of steps (glibc's heap fragments as shapes change; try --steps 64)
A and B run on the system allocator, as a plain `python` process does; comparing them with the
glibc contender separates what the trainer buys from what the allocator buys.
All three get the same tokenized examples (chat template, answer-only labels), the same LoRA
(r, alpha, dropout, all linear layers), learning-rate schedule, seed and examples per step.
Throughput counts real (non-padding) tokens per second of optimizer steps; the final losses are the
mean training loss of the last steps and one fp32 validation loss computed by the same function
for every contender.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from econlm.allocator import current_allocator, jemalloc_library, preload_env
from econlm.bench.common import peak_rss_mb, write_result
from econlm.errors import UserError

PAD_TO = 512
VAL_PER_TASK = 16
MICRO_BATCH = 4  # Trainer's per-device batch, accumulated to the preset's examples per step like econlm
DEFAULT_PRESET = "cpu-smollm2-lora"


def _config(preset: str, corpus: Path, examples: int, steps: int):
    from econlm.config import load_config

    return load_config(preset, [
        f"data.corpus={corpus}", "data.tasks={title: 1, classify: 1}", f"train.max_steps={steps}", f"data.max_train_examples_per_task={examples // 2}",
        f"data.val_examples_per_task={VAL_PER_TASK}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
    ])


def _encoded(config):
    """The contenders' base model and shared examples: econlm's own selection and encoding."""
    from econlm.models import ModelRef, load_tokenizer
    from econlm.training.data import encode_all
    from econlm.training.trainer import training_examples

    base = ModelRef.parse(config.model.base)
    tokenizer = load_tokenizer(base)
    train_sets, val_sets, _ = training_examples(config)
    train, _ = encode_all([e for items in train_sets.values() for e in items], tokenizer, config.data.max_length)
    val = {task: encode_all(items, tokenizer, config.data.max_length)[0] for task, items in val_sets.items()}
    return base, tokenizer, train, val


def econlm_autocasts(config) -> bool:
    from econlm.training.trainer import autocast_dtype

    return autocast_dtype(config, "cpu") is not None


def _val_loss(model, val, tokenizer) -> float:
    import torch

    from econlm.training.trainer import validation_loss

    losses = validation_loss(model, val, 2048, tokenizer.pad_token_id, None, torch.device("cpu"))
    return sum(losses.values()) / len(losses)


def _run_trainer(config, pad_to_max: bool, bf16: bool) -> dict[str, Any]:
    """A baseline: transformers Trainer + peft LoRA with fp32 weights, fixed or dynamic padding,
    with or without bf16 autocast."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    base, tokenizer, train, val = _encoded(config)
    features = [{"input_ids": e.input_ids, "labels": [t if m else -100 for t, m in zip(e.input_ids, e.label_mask)]}
                for e in train]

    counted = {"real": 0, "padded": 0}  # every batch the Trainer draws passes through here

    def collate(batch):
        width = PAD_TO if pad_to_max else max(len(f["input_ids"]) for f in batch)
        counted["real"] += sum(len(f["input_ids"]) for f in batch)
        counted["padded"] += width * len(batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, f in enumerate(batch):
            n = len(f["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)
            self.cpu_seconds.append(time.process_time() - self.cpu_started)

    torch.manual_seed(config.train.seed)
    model = AutoModelForCausalLM.from_pretrained(base.pretrained_source(), dtype=torch.float32)
    model = get_peft_model(model, config.lora.peft_config())
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=config.train.batch_size // MICRO_BATCH, max_steps=config.train.max_steps,
            learning_rate=config.train.learning_rate, lr_scheduler_type="cosine", warmup_steps=round(config.train.warmup_ratio * config.train.max_steps),
            max_grad_norm=config.train.max_grad_norm, weight_decay=config.train.weight_decay, seed=config.train.seed,
            logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False, disable_tqdm=True,
            use_cpu=True, dataloader_num_workers=0, bf16=bf16,
        )
        trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collate, callbacks=[timer])
        trainer.train()
    peak = peak_rss_mb()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {
        "seconds": sum(timer.seconds),
        "cpu_seconds": sum(timer.cpu_seconds),
        "steps": len(timer.seconds),
        "real_tokens": counted["real"],
        "padded_tokens": counted["padded"],
        "losses": losses,
        "peak_rss_mb": peak,
        "val_loss": _val_loss(model, val, tokenizer),
    }


def _run_econlm(config) -> dict[str, Any]:
    import json

    from econlm.models import ModelRef, load_model
    from econlm.training import train

    _, tokenizer, _, val = _encoded(config)
    with tempfile.TemporaryDirectory() as tmp:
        run = train(config, Path(tmp) / "run", progress=False)
        peak = peak_rss_mb()
        metrics = json.loads((run / "metrics.json").read_text())
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        model, _ = load_model(ModelRef.parse(run), device="cpu")
    steps = [r for r in rows if "loss" in r]
    return {
        "seconds": metrics["train_seconds"],
        "cpu_seconds": metrics["train_cpu_seconds"],
        "steps": metrics["steps_done"],
        "real_tokens": metrics["train_tokens"],
        "padded_tokens": sum(r["padded_tokens"] for r in steps),
        "losses": [r["loss"] for r in steps],
        "peak_rss_mb": peak,
        "val_loss": _val_loss(model, val, tokenizer),
    }


def _contender(name: str, preset: str, corpus: str, examples: int, steps: int) -> dict[str, Any]:
    """Runs in a fresh process (spawned), so its peak RSS is its own."""
    config = _config(preset, Path(corpus), examples, steps)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if name.startswith("econlm"):
        raw = _run_econlm(config)
    else:
        raw = _run_trainer(config, pad_to_max=name.startswith("A"), bf16=name.startswith("C"))
    last = raw["losses"][-4:]
    return {
        "tokens_per_s": raw["real_tokens"] / raw["seconds"],
        "seconds_per_step": raw["seconds"] / raw["steps"],
        "tokens_per_cpu_s": raw["real_tokens"] / raw["cpu_seconds"],
        "cpu_seconds_per_step": raw["cpu_seconds"] / raw["steps"],
        "steps": raw["steps"],
        "real_tokens": raw["real_tokens"],
        "padded_tokens": raw["padded_tokens"],
        "peak_rss_mb": raw["peak_rss_mb"],
        "final_train_loss": sum(last) / len(last),
        "train_losses": raw["losses"],
        "val_loss": raw["val_loss"],
        "allocator": current_allocator(),
        "wall_seconds": time.perf_counter() - started,
        "load_average_before": load_before,
    }


CONTENDERS = {"A": "A: Trainer fp32 pad-to-512", "B": "B: Trainer fp32 dynamic-pad",
              "C": "C: Trainer bf16-autocast dynamic-pad", "econlm": "econlm", "glibc": "econlm on glibc malloc"}
ECONLM = CONTENDERS["econlm"]


@contextlib.contextmanager
def _allocator(name: str, jemalloc: str | None):
    """Spawned contenders copy os.environ: econlm's starts on `jemalloc` (if any), the others without it."""
    saved = dict(os.environ)
    os.environ.pop("LD_PRELOAD", None)
    if name == ECONLM and jemalloc:
        os.environ.update(preload_env(os.environ, jemalloc))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _ratios(results: dict[str, dict]) -> dict[str, float]:
    """econlm against each baseline that ran."""
    ours, ratios = results[ECONLM], {}
    for key in ("A", "B", "C", "glibc"):
        other = results.get(CONTENDERS[key])
        if other is None:
            continue
        ratios[f"econlm_vs_{key}_tokens_per_s"] = ours["tokens_per_s"] / other["tokens_per_s"]
        ratios[f"econlm_vs_{key}_tokens_per_cpu_s"] = ours["tokens_per_cpu_s"] / other["tokens_per_cpu_s"]
        ratios[f"econlm_vs_{key}_peak_rss"] = ours["peak_rss_mb"] / other["peak_rss_mb"]
        ratios[f"econlm_minus_{key}_val_loss"] = ours["val_loss"] - other["val_loss"]
    return ratios


def default_contenders(autocasts: bool, have_jemalloc: bool) -> tuple[str, ...]:
    """Every contender this machine can run and that compares something: C only where econlm's
    preset autocasts to bf16, glibc only beside jemalloc."""
    return ("A", "B") + (("C",) if autocasts else ()) + ("econlm",) + (("glibc",) if have_jemalloc else ())


def run_bench(corpus: Path, examples: int = 256, steps: int = 16, out: Path = Path("bench/results"),
              contenders: tuple[str, ...] | None = None, preset: str = DEFAULT_PRESET) -> tuple[Path, dict]:
    """Run the chosen contenders (keys of CONTENDERS; default: all this machine can run) one after
    another on `preset`'s model and settings; write and return the result JSON."""
    from tqdm.auto import tqdm

    jemalloc = jemalloc_library()  # looked up once: each lookup runs ldconfig
    config = _config(preset, corpus, examples, steps)  # a bad preset fails here, before any contender starts
    autocasts = econlm_autocasts(config)
    if contenders is None:
        contenders = default_contenders(autocasts, jemalloc is not None)

    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown or "econlm" not in contenders:
        raise UserError(f"--contenders: econlm plus any of {', '.join(CONTENDERS)} (got {', '.join(contenders)})")
    if "glibc" in contenders and not jemalloc:
        raise UserError("the glibc-malloc contender is compared with jemalloc, which this machine lacks "
                        "(apt-get install libjemalloc2), or leave it out of --contenders")
    context = multiprocessing.get_context("spawn")
    results = {}
    for key in tqdm(contenders, desc="bench train", unit="contender"):
        name = CONTENDERS[key]
        with _allocator(name, jemalloc), context.Pool(1) as pool:
            results[name] = pool.apply(_contender, (name, preset, str(corpus), examples, steps))
    ratios = _ratios(results)
    result = {
        "setup": {"preset": preset, "model": config.model.base, "examples": examples, "steps": steps,
                  "examples_per_step": config.train.batch_size, "lora": config.lora.model_dump(),
                  "econlm_config": config.model_dump(mode="json"), "val_examples_per_task": VAL_PER_TASK,
                  "baseline_micro_batch": MICRO_BATCH, "pad_to": PAD_TO,
                  "econlm_precision": "bf16-autocast" if autocasts else "fp32",
                  "note": "tokens_per_s counts non-padding tokens over the wall-clock time of the optimizer steps; "
                          "tokens_per_cpu_s over the process's CPU time (all threads) in the same steps, which other "
                          "load on a shared machine barely changes; val_loss is fp32 answer-token cross-entropy on "
                          "the same validation examples for every contender"},
        "contenders": results,
        "ratios": ratios,
        "targets": {"econlm_vs_A_tokens_per_s": ">= 2.0", "econlm_vs_B_tokens_per_s": ">= 1.3",
                    "econlm_vs_A_peak_rss": "<= 1.0"},
    }
    return write_result(out, "train", result), result
