"""Crash-safe checkpoints: RUN_DIR/checkpoints/step-N/, built in a temp dir and renamed into place.

A checkpoint holds only what training changes: the LoRA weights (peft adapter safetensors), the
optimizer and LR-scheduler state, the RNG states (LoRA dropout) of every process and a small JSON
trainer state (step, best validation loss, time and tokens so far). The frozen base model is not
copied, so a checkpoint of a 135M-parameter model with r=16 LoRA is a few tens of MB instead of
~0.5 GB.

Because the directory only gets its final name (`os.replace`) once everything inside is written,
a kill at any moment leaves either a complete `step-N` or a `.step-N.*.tmp` leftover that is
removed on the next start and never loaded. Optimizer state is a torch pickle of tensors and
numbers, read back with `weights_only=True` (no arbitrary code), and only from this run directory.

The optimizer state (Adam's moments: twice the adapter's size) may be left out of a checkpoint
carried to another machine. The run then resumes approximately: the schedule is replayed to the
step, the moments start from zero, and the trainer ramps the learning rate up again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")

# Test hooks (the only ones), so a test can SIGKILL a save at a chosen point deterministically;
# unset in normal use. PAUSE_ENV: seconds to sleep inside every save, after the adapter weights
# are in the temp dir and before the optimizer state is. PAUSE_AFTER_ENV, "STEP:SECONDS": sleep
# once checkpoint step-STEP is in place, before older checkpoints are pruned.
PAUSE_ENV = "ECONLM_TEST_PAUSE_IN_CHECKPOINT_SAVE"
PAUSE_AFTER_ENV = "ECONLM_TEST_PAUSE_AFTER_CHECKPOINT_SAVE"


@dataclass
class TrainState:
    """The trainer's progress, STATE_FILE of every checkpoint (one JSON object of exactly these
    fields): with the weights, optimizer, scheduler and RNG states, all that resuming needs."""

    step: int = 0
    best_val_loss: float | None = None  # mean over tasks, weighted by train.task_loss_weights
    best_step: int | None = None
    best_val_loss_per_task: dict[str, float] | None = None
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    train_tokens: int = 0
    finished: bool = False

    @classmethod
    def read(cls, path: Path) -> TrainState:
        """The state saved at `path`, refused unless it has exactly the declared fields."""
        saved = json.loads(path.read_text())
        declared = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(saved, dict) or set(saved) != declared:
            fields = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise UserError(f"{path}: not an econlm trainer state (fields {fields}, expected {sorted(declared)})")
        return cls(**saved)


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (by name: only renamed, finished ones match), oldest first."""
    root = run_dir / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def remove_partial_saves(run_dir: Path) -> list[Path]:
    """Delete what killed writes left in the run directory: temp checkpoint dirs, checkpoints
    being pruned (`.step-N.old`), and the temp files and dirs of the run's own atomic writes
    (metrics, log, curve, best adapter); returns what was removed."""
    root = run_dir / CHECKPOINTS
    leftovers = [*root.glob(".*.tmp"), *root.glob(".step-*.old"), *run_dir.glob(".*.tmp")]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` checkpoints; returns the removed ones' former paths.

    Each is renamed to `.step-N.old` before it is deleted, so a kill midway leaves no
    half-deleted `step-N` that looks complete, only a leftover `remove_partial_saves` clears.
    """
    pruned = [path for _, path in checkpoint_dirs(run_dir)[:-keep]]
    for path in pruned:
        doomed = path.with_name(f".{path.name}.old")
        shutil.rmtree(doomed, ignore_errors=True)  # a leftover of an earlier prune would block the rename
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return pruned


def rng_state() -> dict:
    """This process's RNG states: its CPU generator and, where there is CUDA, every device's."""
    import torch

    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return rng


def _rng_key(name: str, rank: int) -> str:
    """Process 0 keeps the plain names that single-process checkpoints have always used."""
    return name if rank == 0 else f"{name}-rank{rank}"


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, rng_per_process: list[dict], state: TrainState,
                    keep: int) -> Path:
    """Write checkpoints/step-N (N = state.step) atomically, then keep only the newest `keep`.

    `rng_per_process` holds `rng_state()` of every process, by rank: with several processes each
    draws other dropout masks, so each must get its own generator back for resume to be exact.
    """
    import torch
    from safetensors.torch import save_file

    final = run_dir / CHECKPOINTS / f"step-{state.step}"
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        if os.environ.get(PAUSE_ENV):
            time.sleep(float(os.environ[PAUSE_ENV]))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
        rng = {_rng_key(name, rank): tensor
               for rank, states in enumerate(rng_per_process) for name, tensor in states.items()}
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / STATE_FILE, dataclasses.asdict(state))
        for path in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    pause_step, _, pause_seconds = os.environ.get(PAUSE_AFTER_ENV, "").partition(":")
    if pause_step == str(state.step):
        time.sleep(float(pause_seconds))
    prune_checkpoints(run_dir, keep)
    return final


def has_optimizer_state(path: Path) -> bool:
    """Whether checkpoint `path` resumes exactly: with the optimizer state it was saved with."""
    return (path / OPTIMIZER_FILE).is_file()


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0) -> TrainState:
    """Restore LoRA weights, optimizer, scheduler and process `rank`'s RNG from a checkpoint;
    returns its trainer state. Without its optimizer state the optimizer is left as built and the
    schedule is replayed up to the checkpoint's step."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = TrainState.read(path / STATE_FILE)
    if f"step-{state.step}" != path.name:
        raise UserError(f"{path}: holds the state of step {state.step}, not of {path.name}")
    weights = load_file(str(path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{path}: adapter weights do not fit the model ({result.unexpected_keys[:3]})")
    if has_optimizer_state(path):
        states = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
    else:
        _replay_schedule(scheduler, state.step)
    rng = load_file(str(path / "rng.safetensors"))
    if _rng_key("cpu", rank) not in rng:
        raise UserError(f"{path}: has no RNG state for process {rank}; resume with the launch the run started with")
    torch.set_rng_state(rng[_rng_key("cpu", rank)])
    if _rng_key("cuda", rank) in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng[_rng_key("cuda", rank)]))
    return state


def _replay_schedule(scheduler, steps: int) -> None:
    """Step a fresh LR scheduler `steps` times: the warm-up + cosine schedule is a function of the
    step alone, so this reaches the saved one. torch warns that no optimizer step came first; here
    that is the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for _ in range(steps):
            scheduler.step()
