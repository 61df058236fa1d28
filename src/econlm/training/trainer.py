"""LoRA / QLoRA supervised fine-tuning on a weighted mix of tasks, resumable exactly after a crash.

Why a custom loop on `accelerate` rather than transformers' `Trainer` (or TRL's `SFTTrainer`,
which is built on it):
- Crash safety. `Trainer` writes checkpoint files one by one into their final directory, so a
  kill during a save leaves a half-written checkpoint that `resume_from_checkpoint` will load.
  Here a checkpoint is built in a temp dir and renamed into place (`checkpoint.py`), and holds
  only the LoRA weights and optimizer state, not a copy of the frozen base model.
- Exact resume. The data position is the step number: `Schedule` is a pure function of
  (seed, step), with no sampler or dataloader-worker state to restore.
- Speed on CPU. The loss needs the output head only at answer positions (titles and labels are
  ~5% of the tokens); `logits_to_keep` with a boolean mask skips the rest of the 49k-wide head.
  `Trainer` computes full logits for every position.
- `Accelerator` still does what is hard to write by hand: DDP across processes / machines
  (`accelerate launch`), device placement, gradient sync only on the last micro-batch.

A run directory, when done (and already while training, for the best adapter so far):
    adapter_config.json, adapter_model.safetensors   the best adapter by validation loss
    tokenizer files + chat template                  exactly what training rendered prompts with
    econlm_run.json                                  resolved config, templates, data and base hashes, versions,
                                                     the adapter it started from (model.init_adapter)
    metrics.json, train_log.jsonl, train_curve.png   results
    checkpoints/step-N/                              resumable state (last K)
    base/                                            only for `model.random_init` (the debug preset)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from econlm import __version__, provenance
from econlm.allocator import current_allocator
from econlm.config import TrainConfig, validate_config
from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json, sha256_file
from econlm.models import ModelRef
from econlm.training import init_adapter
from econlm.training.checkpoint import (
    OPTIMIZER_FILE,
    TrainState,
    checkpoint_dirs,
    has_optimizer_state,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_saves,
    rng_state,
    save_checkpoint,
)
from econlm.training.data import (
    Encoded,
    Schedule,
    answer_token_losses,
    classify_then_title,
    collate,
    encode_all,
    micro_batches,
    step_token_weights,
    task_weight,
)
from econlm.training.report import TRAIN_CURVE, TrainLog, plot_curve

RUN_FILE = "econlm_run.json"
METRICS_FILE = "metrics.json"
BASE_DIR = "base"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


# --------------------------------------------------------------------------- environment


def check_environment(config: TrainConfig) -> None:
    """Fail early, in one line, when the config needs CUDA + bitsandbytes and this machine lacks them."""
    import torch

    needs = []
    if config.model.quantization == "nf4":
        needs.append("model.quantization=nf4")
    if config.train.optimizer.startswith("paged"):
        needs.append(f"train.optimizer={config.train.optimizer}")
    if not needs:
        return
    missing = [what for what, ok in (("CUDA", torch.cuda.is_available()),
                                     ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None)) if not ok]
    if missing:
        raise UserError(
            f"{' and '.join(needs)} needs a CUDA GPU and bitsandbytes (missing here: {', '.join(missing)}): "
            "run it on a CUDA machine after pip install 'econlm[gpu]'"
        )


def autocast_dtype(config: TrainConfig, device_type: str):
    """bf16 for autocast where the hardware computes it natively (or when asked), else None (fp32)."""
    import torch

    from econlm.models import cpu_has_bf16

    precision = config.model.precision
    if precision == "fp32":
        return None
    if precision == "bf16-autocast":
        return torch.bfloat16
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device_type == "cpu" and cpu_has_bf16() else None


# --------------------------------------------------------------------------- data


def schedule_weights(config: TrainConfig) -> dict[str, float]:
    """What one epoch draws, by sequence kind: the tasks, or with classify-then-title sequences one
    kind holding both paper tasks (their common weight) beside any others."""
    from econlm.data.templates import CLASSIFY_THEN_TITLE

    tasks = config.data.tasks
    if config.data.sequences == "per-task":
        return dict(tasks)
    others = {task: weight for task, weight in tasks.items() if task not in CLASSIFY_THEN_TITLE.tasks}
    return {CLASSIFY_THEN_TITLE.task: tasks["title"], **others}


def training_examples(config: TrainConfig) -> tuple[dict[str, list], dict[str, list], dict[str, Any]]:
    """(train examples per task, fixed validation subset per task, data provenance) from the corpus.

    Built with the same functions as `econlm data build` (leak filter, templates, seeded order),
    so the examples equal a built dataset's `<task>/train.jsonl` for the same seed. With
    classify-then-title sequences the two paper tasks are one kind of sequence, one per paper.
    """
    from econlm.data.build import drop_leaks, paper_examples, qa_examples
    from econlm.data.corpus import load_corpus
    from econlm.paths import default_corpus
    from econlm.types import TASKS, QAPair

    corpus_dir = Path(config.data.corpus) if config.data.corpus else default_corpus()
    corpus = load_corpus(corpus_dir)
    train_papers, leaks = drop_leaks(corpus)
    pairs = list(QAPair.read_jsonl(config.data.qa_file)) if config.data.qa_file else []
    train: dict[str, list] = {}
    validation: dict[str, list] = {}
    for task in schedule_weights(config):
        if task == "qa":
            train[task] = qa_examples(pairs, train_papers, "train")
            validation[task] = qa_examples(pairs, corpus["validation"], "validation")
        elif task not in TASKS:
            train[task] = classify_then_title(train_papers)
            validation[task] = classify_then_title(corpus["validation"])
        else:
            train[task] = paper_examples(task, train_papers, "train")
            validation[task] = paper_examples(task, corpus["validation"], "validation")
        random.Random(f"{config.train.seed}-{task}").shuffle(train[task])
        train[task] = train[task][: config.data.max_train_examples_per_task]
        validation[task] = validation[task][: config.data.val_examples_per_task]
        if not train[task] or not validation[task]:
            raise UserError(f"{corpus_dir}: no {task} examples in the train or validation split")
    data = {
        "corpus": str(corpus_dir.resolve()),
        "corpus_sha256": provenance.data_sha256(corpus_dir),
        "qa_file_sha256": sha256_file(config.data.qa_file) if config.data.qa_file else None,
        "train_papers_dropped_as_leaks": leaks,
    }
    return train, validation, data


# --------------------------------------------------------------------------- model


def _random_base(config: TrainConfig, tokenizer, folder: Path) -> None:
    """Save a seeded, randomly initialised LLaMA of the configured shape (+ tokenizer) to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = config.model.random_init
    torch.manual_seed(config.train.seed)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max(2048, config.data.max_length),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **shape.model_dump(),
    ))
    with atomic_dir(folder) as tmp:
        llama.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def base_reference(config: TrainConfig, run_dir: Path, base: ModelRef) -> tuple[str, str]:
    """(reference stored in adapter_config.json, what `from_pretrained` loads).

    A random base lives in RUN_DIR/base and is recorded as "./base", which `econlm.models.ModelRef`
    resolves against the adapter's folder.
    """
    if config.model.random_init is not None:
        return f"./{BASE_DIR}", str(run_dir / BASE_DIR)
    return base.text, base.pretrained_source()


def build_model(config: TrainConfig, source: Path | str, base_ref: str, device_index: int,
                start_from: init_adapter.InitAdapter | None = None):
    """The base model (fp32, or 4-bit NF4 for QLoRA) with LoRA adapters on it: fresh ones, or
    those of `start_from` (the run's `model.init_adapter`)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if config.model.quantization == "nf4":
        from econlm.models import nf4_config

        kwargs = {"dtype": torch.bfloat16, "quantization_config": nf4_config("bfloat16"), "device_map": {"": device_index}}
    model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    if config.model.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.model.gradient_checkpointing)
    elif config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(config.train.seed)  # LoRA initialisation
    model = get_peft_model(model, config.lora.peft_config())
    model.peft_config["default"].base_model_name_or_path = base_ref
    if start_from is not None:
        init_adapter.load_into(model, start_from)
    return model


def build_optimizer(config: TrainConfig, model, total_steps: int):
    import torch
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    settings = config.train
    if settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    else:
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if settings.optimizer == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
        optimizer = cls(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps(settings, total_steps), total_steps)
    return optimizer, scheduler


def warmup_steps(settings, total_steps: int) -> int:
    """Steps of the linear LR warm-up: train.warmup_ratio of the run."""
    return round(settings.warmup_ratio * total_steps)


# --------------------------------------------------------------------------- evaluation


def validation_loss(model, sets: dict[str, list[Encoded]], token_budget: int, pad_id: int, amp_dtype, device,
                    accelerator=None) -> dict[str, float]:
    """Mean cross-entropy per answer token, per task (padded batches; independent of `batching`).
    A set of classify-then-title sequences scores each answer under its own task.

    Given the `accelerator` of several processes, each scores its share of every set and the sums
    are added up, so the processes split the work instead of each repeating all of it.
    """
    import torch

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    tasks = list(dict.fromkeys(task for items in sets.values() for e in items for task in e.answer_tasks))
    row_of = {task: row for row, task in enumerate(tasks)}
    was_training = model.training
    model.eval()
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    token_counts = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    with torch.no_grad():
        for items in sets.values():
            for batch in micro_batches(items, token_budget, packed=False, rank=rank, world_size=world):
                tensors = {k: v.to(device) for k, v in collate(batch, False, pad_id).items()}
                rows = torch.tensor([row_of[task] for e in batch for task in e.label_tasks], device=device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    losses = answer_token_losses(model, tensors).double()
                loss_sums.index_add_(0, rows, losses)
                token_counts.index_add_(0, rows, torch.ones_like(losses))
    sums = torch.stack([loss_sums, token_counts])
    if world > 1:
        sums = accelerator.reduce(sums, "sum")
    model.train(was_training)
    return {task: (sums[0, row] / sums[1, row]).item() for row, task in enumerate(tasks)}


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step measured: a train_log.jsonl row and the progress bar's figures."""

    loss: float
    lr: float
    grad_norm: float
    tokens: int
    padded_tokens: int  # all processes together (micro-batches are sorted longest first)
    seconds: float
    cpu_seconds: float


class Run:
    """One training run in one run directory, as a recipe of named steps (after torchtune's
    single-device LoRA recipe): set up the processes, data, schedule, run directory, model and
    optimizer; resume; then train steps, with evaluations and checkpoints between them.
    `fit()` runs them in that order; what they build is held in the attributes below."""

    accelerator: Any
    is_main: bool
    amp_dtype: Any  # torch.bfloat16 for autocast, or None (fp32)
    tokenizer: Any
    train_encoded: list[Encoded]
    val_encoded: dict[str, list[Encoded]]
    encoded_counts: dict[str, int]
    data_provenance: dict[str, Any]
    schedule: Schedule
    base: ModelRef
    start_from: init_adapter.InitAdapter | None  # model.init_adapter; None when unset or a checkpoint holds the weights
    base_ref: str  # recorded in adapter_config.json
    base_source: str  # what `from_pretrained` loads
    model: Any  # prepared for the processes (DDP-wrapped when there are several)
    unwrapped: Any  # the peft model itself: what is evaluated and saved
    optimizer: Any
    scheduler: Any
    rewarm: tuple[int, int] | None  # (first step, steps): the LR ramp after a resume without optimizer state

    def __init__(self, config: TrainConfig, run_dir: Path, resuming: bool, progress: bool = True,
                 preset: str | None = None):
        self.config = config
        self.preset = preset
        self.run_dir = run_dir
        self.resuming = resuming
        self.progress = progress
        self.log = TrainLog(run_dir)
        self.state = TrainState()
        self.rewarm = None

    def fit(self) -> Path:
        self._resolve_models()
        self._setup_processes()
        self._setup_data()
        self._setup_schedule()
        self._prepare_run_dir()
        self._setup_model()
        self._setup_optimizer()
        self._resume()
        if self.state.finished:
            self._complete_bookkeeping()
            return self.run_dir
        self._train()
        return self.run_dir

    # ----------------------------------------------------------------------- set-up

    def _resolve_models(self) -> None:
        """The base model and the adapter to start from, resolved and checked before anything is
        written or loaded. A resumed run that has a checkpoint loads its weights from there and
        needs no starting adapter (which may have been replaced since, e.g. by a newer shipped one)."""
        self.base = ModelRef.parse(self.config.model.base)  # the run's base model, resolved once where the run starts
        needs_start = not (self.resuming and checkpoint_dirs(self.run_dir))
        self.start_from = init_adapter.resolve(self.config, self.base) if needs_start else None

    def _setup_processes(self) -> None:
        """The accelerator (one process, or DDP under `accelerate launch`) and the autocast precision.

        Without a GPU (or other accelerator) the processes run DDP on the CPU over gloo: accelerate
        only does so when asked (`cpu=True`), and would otherwise start unconnected single processes.
        """
        import torch
        from accelerate import Accelerator

        check_environment(self.config)
        self.accelerator = Accelerator(cpu=not torch.accelerator.is_available())
        self.is_main = self.accelerator.is_main_process
        if self.config.train.batch_size < self.accelerator.num_processes:
            raise UserError(f"train.batch_size ({self.config.train.batch_size}) must be at least the number of "
                            f"processes ({self.accelerator.num_processes})")
        self.amp_dtype = autocast_dtype(self.config, self.accelerator.device.type)
        if not self.resuming and (self.run_dir / RUN_FILE).exists():
            raise UserError(f"{self.run_dir}: already holds a run; continue it with "
                            f"`econlm train --resume {self.run_dir}` or choose another --out")
        self.accelerator.wait_for_everyone()  # every process has checked before process 0 writes the run file
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _setup_data(self) -> None:
        """Tokenizer, the encoded train examples and validation sets, and the data's provenance."""
        from econlm.models import load_tokenizer

        config = self.config
        self.tokenizer = load_tokenizer(self.base)
        train_sets, val_sets, self.data_provenance = training_examples(config)
        self.train_encoded, self.encoded_counts = encode_all(
            [e for items in train_sets.values() for e in items], self.tokenizer, config.data.max_length)
        self.val_encoded = {task: encode_all(items, self.tokenizer, config.data.max_length)[0]
                            for task, items in val_sets.items()}

    def _setup_schedule(self) -> None:
        """Which examples each step trains on: a pure function of (seed, step), so resuming needs only the step."""
        settings = self.config.train
        self.schedule = Schedule(self.train_encoded, schedule_weights(self.config), settings.batch_size, settings.seed,
                                 settings.epochs, settings.max_steps)

    def _prepare_run_dir(self) -> None:
        """A new run records itself (tokenizer, econlm_run.json); a resumed one must match its record."""
        config, run_dir = self.config, self.run_dir
        self.base_ref, self.base_source = base_reference(config, run_dir, self.base)
        if self.resuming:
            self._check_same_run(self.data_provenance, self.accelerator.num_processes)
        if self.is_main:
            if config.model.random_init is not None and not (run_dir / BASE_DIR / "config.json").is_file():
                _random_base(config, self.tokenizer, run_dir / BASE_DIR)
            if not self.resuming:
                self.tokenizer.save_pretrained(run_dir)
                self._write_run_file(ModelRef.parse(self.base_source).hash)
            remove_partial_saves(run_dir)
        self.accelerator.wait_for_everyone()

    def _setup_model(self) -> None:
        self.unwrapped = build_model(self.config, self.base_source, self.base_ref,
                                     self.accelerator.local_process_index, self.start_from)

    def _setup_optimizer(self) -> None:
        """Optimizer and LR schedule over the LoRA weights; the model is prepared for the processes after."""
        self.optimizer, self.scheduler = build_optimizer(self.config, self.unwrapped, self.schedule.total_steps)
        self.model = self.accelerator.prepare_model(self.unwrapped)
        self.unwrapped = self.accelerator.unwrap_model(self.model)

    def _resume(self) -> None:
        """Continue from the latest complete checkpoint: weights, optimizer, scheduler, RNG and state
        (or all but the optimizer, with the learning rate ramped up again)."""
        if self.resuming and (found := checkpoint_dirs(self.run_dir)):
            step, path = found[-1]
            self.state = load_checkpoint(path, self.unwrapped, self.optimizer, self.scheduler,
                                         self.accelerator.process_index)
            if self.is_main:
                print(f"resuming from {path} (step {step} of {self.schedule.total_steps})", file=sys.stderr)
            if not (has_optimizer_state(path) or self.state.finished):
                self.rewarm = (step, max(1, warmup_steps(self.config.train, self.schedule.total_steps)))
        if self.is_main:
            self.log.rewind(self.state.step)
            if self.rewarm:
                self._record_optimizer_restart()

    def _record_optimizer_restart(self) -> None:
        """Say, and log once, that the run goes on from a checkpoint without optimizer state: from
        here it is no longer the run an uninterrupted one would have been."""
        step, steps = self.rewarm
        print(f"{self.run_dir}: checkpoint step-{step} has no {OPTIMIZER_FILE}: Adam's moments start from "
              f"zero and the learning rate ramps up again over {steps} steps (not an exact resume)", file=sys.stderr)
        row = {"step": step, "event": "optimizer_restart", "rewarm_steps": steps}
        if row not in self.log.rows():
            self.log.append(row)

    def _complete_bookkeeping(self) -> None:
        """Finish what a run killed after its final checkpoint left undone (metrics.json still
        unfinished, older checkpoints not yet pruned), and say what was done; a run whose
        bookkeeping is whole is left as it is. The best adapter needs nothing: it is written
        before the final checkpoint."""
        if self.is_main:
            done = []
            keep = self.config.train.keep_checkpoints
            if pruned := prune_checkpoints(self.run_dir, keep):
                done.append(f"removed {', '.join(p.name for p in pruned)} (keep_checkpoints={keep})")
            if not self._metrics_finished():
                self._write_metrics(finished=True)
                done.append(f"wrote the final {METRICS_FILE} and {TRAIN_CURVE}")
            if done:
                print(f"{self.run_dir}: training had finished at step {self.state.step}; completed what the "
                      f"interrupted run left undone: {'; '.join(done)}", file=sys.stderr)
            else:
                print(f"{self.run_dir}: training already finished at step {self.state.step}", file=sys.stderr)
        self.accelerator.wait_for_everyone()

    def _metrics_finished(self) -> bool:
        """Whether metrics.json is the finished run's (it is written atomically, after the curve)."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return False
        metrics = json.loads(path.read_text())
        return metrics.get("finished") is True and metrics.get("steps_done") == self.state.step

    # ----------------------------------------------------------------------- training

    def _train(self) -> None:
        from tqdm.auto import tqdm

        settings, total = self.config.train, self.schedule.total_steps
        bar = tqdm(total=total, initial=self.state.step, unit="step", desc="train",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        self.model.train()
        for step in range(self.state.step, total):
            stats = self._train_step(step)
            done = self.state.step
            if self.is_main and (done % settings.log_every == 0 or done == total):
                self.log.append({"step": done, "epoch": round(self.schedule.epoch_of(done), 4), "loss": stats.loss,
                                 "lr": stats.lr, "grad_norm": stats.grad_norm, "tokens": stats.tokens,
                                 "padded_tokens": stats.padded_tokens, "seconds": round(stats.seconds, 3),
                                 "cpu_seconds": round(stats.cpu_seconds, 3),
                                 "tokens_per_s": round(stats.tokens / stats.seconds, 1)})
            bar.set_postfix(loss=f"{stats.loss:.3f}", tok_s=f"{stats.tokens / stats.seconds:.0f}", refresh=False)
            bar.update(1)
            last = stop = done == total
            if done % settings.eval_every == 0 or last:
                mean = self._evaluate()
                bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{mean:.3f}", refresh=False)
                stop = last or self._patience_exhausted()
            if done % settings.checkpoint_every == 0 or stop:
                self._save_checkpoint(finished=stop)
            if stop:
                break
        bar.close()
        if self.is_main:
            self._write_metrics(finished=True)
        self.accelerator.wait_for_everyone()

    def _train_step(self, step: int) -> StepStats:
        """One optimizer step over the schedule's examples for `step`, split into micro-batches."""
        import torch

        accelerator, device, world = self.accelerator, self.accelerator.device, self.accelerator.num_processes
        settings = self.config.train
        packed = settings.batching == "packed"
        started, cpu_started = time.perf_counter(), time.process_time()
        step_items = self.schedule.step_examples(step)
        token_weights = step_token_weights(step_items, settings.loss_average, settings.task_loss_weights)
        step_tokens = sum(len(e.input_ids) for e in step_items)
        batches = micro_batches(step_items, settings.micro_batch_tokens, packed, accelerator.process_index, world)
        own_padded_tokens = sum(len(b) * len(b[0].input_ids) if not packed else sum(len(e.input_ids) for e in b)
                                for b in batches)
        loss_sum = torch.zeros((), device=device)
        for i, batch in enumerate(batches):
            tensors = {k: v.to(device) for k, v in collate(batch, packed, self.tokenizer.pad_token_id).items()}
            weights = torch.tensor([w for e in batch for w in token_weights[e.id]], device=device)
            sync = i == len(batches) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(self.model):
                with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                    batch_loss = (answer_token_losses(self.model, tensors) * weights).sum()
                # DDP averages gradients over processes; scaling by `world` makes the result the
                # step's weighted loss (weights summing to 1 over the step), however it was split.
                accelerator.backward(batch_loss * world)
            loss_sum += batch_loss.detach()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = accelerator.clip_grad_norm_(params, settings.max_grad_norm or float("inf"))
        if self.rewarm and step < self.rewarm[0] + self.rewarm[1]:
            ramp = (step - self.rewarm[0] + 1) / self.rewarm[1]
            for group, scheduled in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = scheduled * ramp  # the scheduler's next step sets it from the schedule again
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        own_sums = torch.stack([loss_sum.double(),
                                torch.tensor(own_padded_tokens, dtype=torch.float64, device=device)])
        step_loss, padded_tokens = accelerator.reduce(own_sums, "sum").tolist()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        state = self.state
        state.step = step + 1
        state.train_seconds += seconds
        state.train_cpu_seconds += cpu_seconds
        state.train_tokens += step_tokens
        return StepStats(loss=step_loss, lr=lr, grad_norm=float(grad_norm), tokens=step_tokens,
                         padded_tokens=int(padded_tokens), seconds=seconds, cpu_seconds=cpu_seconds)

    def _evaluate(self) -> float:
        """Validation loss per task; the best adapter so far is kept at the run directory's top level.
        Returns their mean, weighted by train.task_loss_weights as the training loss is: a second stage
        that weights Q&A twice is chosen by its Q&A loss twice, not by its replay tasks' alike."""
        val = validation_loss(self.unwrapped, self.val_encoded, self.config.train.micro_batch_tokens,
                              self.tokenizer.pad_token_id, self.amp_dtype, self.accelerator.device, self.accelerator)
        weights = {task: task_weight(self.config.train.task_loss_weights, task) for task in val}
        mean = sum(weights[task] * loss for task, loss in val.items()) / sum(weights.values())
        state = self.state
        improved = state.best_val_loss is None or mean < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.best_val_loss_per_task = mean, state.step, val
        if self.is_main:
            if improved:
                self._save_best_adapter()
            self.log.append({"step": state.step, "val_loss": val, "val_loss_mean": mean, "best": improved})
            self._write_metrics(finished=False)
        return mean

    def _patience_exhausted(self) -> bool:
        """Whether the last `early_stopping_patience` evaluations all failed to improve on the best.
        Evaluations fall on multiples of eval_every, so the count follows from the step and the best
        step alone: a resumed run stops where an uninterrupted one would, with no extra state."""
        patience, every = self.config.train.early_stopping_patience, self.config.train.eval_every
        state = self.state
        return patience is not None and state.best_step is not None and \
            state.step // every - state.best_step // every >= patience

    def _save_checkpoint(self, finished: bool) -> None:
        """Process 0 writes the checkpoint (the weights and optimizer are the same in every process),
        with every process's RNG state; the others wait until it is on disk."""
        from accelerate.utils import gather_object

        self.state.finished = finished
        rng_per_process = gather_object([rng_state()])
        if self.is_main:
            save_checkpoint(self.run_dir, self.unwrapped, self.optimizer, self.scheduler, rng_per_process, self.state,
                            self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    # ----------------------------------------------------------------------- records

    def _write_run_file(self, base_hash: str) -> None:
        from econlm.data.templates import CLASSIFY_THEN_TITLE, TEMPLATES

        schedule = self.schedule
        joint = self.config.data.sequences == "classify-then-title"
        atomic_write_json(self.run_dir / RUN_FILE, {
            "econlm_version": __version__,
            "created": provenance.utc_now(),
            "preset": self.preset,
            "config": self.config.model_dump(mode="json"),
            "seed": self.config.train.seed,
            "base_model": self.base_ref,
            "base_model_hash": base_hash,
            "init_adapter": self.start_from.record() if self.start_from else None,
            "templates": {task: (CLASSIFY_THEN_TITLE if task in CLASSIFY_THEN_TITLE.tasks and joint else TEMPLATES[task]).id
                          for task in self.config.data.tasks},
            "chat_template_sha256": hashlib.sha256((self.tokenizer.chat_template or "").encode()).hexdigest(),
            "data": {**self.data_provenance, "encoded": self.encoded_counts},
            "schedule": {"examples_per_epoch": schedule.epoch_size, "steps_per_epoch": schedule.steps_per_epoch,
                         "total_steps": schedule.total_steps},
            "precision": "bf16-autocast" if self.amp_dtype is not None else "fp32",
            "world_size": self.accelerator.num_processes,
            "allocator": current_allocator(),
            "versions": provenance.library_versions(),
            "machine": provenance.machine(),
        })

    def _check_same_run(self, data: dict, world_size: int) -> None:
        """Resuming must see the data and process count the run started with, or it is not exact."""
        recorded = json.loads((self.run_dir / RUN_FILE).read_text())
        for key in ("corpus_sha256", "qa_file_sha256"):
            if recorded["data"].get(key) != data.get(key):
                raise UserError(f"{self.run_dir}: the training data changed since the run started ({key}); resume needs the same corpus")
        started_from = (recorded.get("init_adapter") or {}).get("adapter_sha256")
        if self.start_from is not None and self.start_from.sha256 != started_from:
            raise UserError(f"{self.run_dir}: {init_adapter.FIELD} {self.start_from.path} changed since the run started "
                            "(adapter sha256); resume needs the adapter it started from")
        if recorded["world_size"] != world_size:
            raise UserError(f"{self.run_dir}: started with {recorded['world_size']} process(es), resumed with {world_size}; use the same launch")

    def _save_best_adapter(self) -> None:
        """Copy the current adapter to the run directory's top level, each file atomically."""
        staging = self.run_dir / ".best-adapter.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.unwrapped.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        for name in ADAPTER_FILES:
            os.replace(staging / name, self.run_dir / name)
        shutil.rmtree(staging, ignore_errors=True)

    def _write_metrics(self, finished: bool) -> None:
        """The curve, then metrics.json: a finished metrics.json means the curve is final too."""
        state, schedule = self.state, self.schedule
        rows = self.log.rows()
        plot_curve(rows, self.run_dir / TRAIN_CURVE, state.best_step)
        train_rows = [r for r in rows if "loss" in r]
        last = train_rows[-max(1, min(len(train_rows), 10)):]
        atomic_write_json(self.run_dir / METRICS_FILE, {
            "finished": finished,
            "steps_done": state.step,
            "total_steps": schedule.total_steps,
            "epochs_done": round(schedule.epoch_of(state.step), 3),
            "stopped_early": finished and state.step < schedule.total_steps,
            "best_step": state.best_step,
            "best_val_loss_mean": state.best_val_loss,
            "best_val_loss": state.best_val_loss_per_task,
            "val_loss": [{"step": r["step"], "mean": r["val_loss_mean"], **r["val_loss"]} for r in rows if "val_loss" in r],
            "final_train_loss_last10": sum(r["loss"] for r in last) / len(last) if last else None,
            "train_seconds": round(state.train_seconds, 1),
            "train_tokens": state.train_tokens,
            "tokens_per_s": round(state.train_tokens / state.train_seconds, 1) if state.train_seconds else None,
            "seconds_per_step": round(state.train_seconds / state.step, 3) if state.step else None,
            # CPU time of this process (all threads): what the work cost, unaffected by other load on a shared machine.
            "train_cpu_seconds": round(state.train_cpu_seconds, 1),
            "tokens_per_cpu_s": round(state.train_tokens / state.train_cpu_seconds, 1) if state.train_cpu_seconds else None,
            "optimizer_restarts": [r["step"] for r in rows if r.get("event") == "optimizer_restart"],
        })


def train(config: TrainConfig, run_dir: str | Path, progress: bool = True, preset: str | None = None) -> Path:
    """Train a new run into `run_dir` (which must not hold a run yet); `preset` (the preset name or
    YAML path `config` was read from) is recorded in econlm_run.json for the model card."""
    return Run(config, Path(run_dir), resuming=False, progress=progress, preset=preset).fit()


def resume(run_dir: str | Path, progress: bool = True) -> Path:
    """Continue a run from its latest complete checkpoint, with the config it started with."""
    run_dir = Path(run_dir)
    record = run_dir / RUN_FILE
    if not record.is_file():
        raise UserError(f"{run_dir}: not an econlm run directory (no {RUN_FILE})")
    config = validate_config(json.loads(record.read_text())["config"], str(record))
    return Run(config, run_dir, resuming=True, progress=progress).fit()
