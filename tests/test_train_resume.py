"""Crash safety: SIGKILL a training process mid-run and mid-checkpoint-save, resume, finish; the
result equals an uninterrupted run and no partial checkpoint is ever loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_processes import (
    assert_same_weights,
    kill,
    launch,
    logged_steps,
    partial_saves,
    wait_for,
)

from econlm.config import load_config
from econlm.errors import UserError
from econlm.training import resume, train
from econlm.training.checkpoint import (
    PAUSE_ENV,
    TrainState,
    checkpoint_dirs,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_saves,
)

OVERRIDES = ["train.max_steps=8", "train.checkpoint_every=2", "train.eval_every=3", "train.keep_checkpoints=2"]


def test_killed_runs_resume_to_the_uninterrupted_result(small_corpus, tmp_path):
    reference = train(load_config("debug", [f"data.corpus={small_corpus}", *OVERRIDES]), tmp_path / "reference",
                      progress=False)

    run, log = tmp_path / "killed", tmp_path / "train.log"
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    # 1. SIGKILL in the middle of the run, after the step-2 checkpoint.
    proc = launch(["--config", "debug", "--corpus", str(small_corpus), *sets, "--out", str(run)], log)
    wait_for(lambda: max(logged_steps(run), default=0) >= 3, proc, log)
    kill(proc)
    assert (run / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert not (run / "metrics.json").is_file() or not json.loads((run / "metrics.json").read_text())["finished"]

    # 2. Resume, and SIGKILL it inside its first checkpoint save (the test hook pauses the save
    #    after the adapter weights are written, before the optimizer state).
    completed_before = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    proc = launch(["--resume", str(run)], log, {PAUSE_ENV: "600"})
    wait_for(lambda: bool(partial_saves(run)), proc, log)
    kill(proc)
    partial = partial_saves(run)[0]
    interrupted_step = int(partial.name.split(".")[1].split("-")[1])
    assert interrupted_step > max(completed_before)
    assert not (run / "checkpoints" / f"step-{interrupted_step}").exists()  # never visible under its final name
    assert not (partial / "optimizer.pt").exists()

    # 3. Resume to the end: it continues from the last complete checkpoint and drops the partial one.
    proc = launch(["--resume", str(run)], log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"resuming from {run / 'checkpoints' / f'step-{max(completed_before)}'}" in text
    assert not list((run / "checkpoints").glob(".*.tmp"))

    # Same adapter (best and last), same per-step losses and the same metrics as the uninterrupted run.
    assert_same_weights(run / "adapter_model.safetensors", reference / "adapter_model.safetensors")
    assert_same_weights(run / "checkpoints" / "step-8" / "adapter_model.safetensors",
                         reference / "checkpoints" / "step-8" / "adapter_model.safetensors")
    rows = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(l) for l in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # no step logged twice or skipped
    for got, want in zip(rows, ref_rows):
        if "loss" in want:
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
        else:
            assert got["val_loss_mean"] == pytest.approx(want["val_loss_mean"], abs=1e-5)
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert metrics["finished"] and metrics["best_step"] == ref_metrics["best_step"]
    assert metrics["train_tokens"] == ref_metrics["train_tokens"]

    # Resuming a finished run does nothing.
    proc = launch(["--resume", str(run)], log)
    assert proc.wait(timeout=300) == 0
    assert "already finished" in log.read_text()


# trainer_state.json as econlm has written it since checkpoints were introduced: runs started then
# must still resume, so these fields (and this file layout) are the format, not an implementation detail.
STATE_FORMAT = ["step", "best_val_loss", "best_step", "best_val_loss_per_task", "train_seconds", "train_cpu_seconds",
                "train_tokens", "finished"]
CHECKPOINT_FILES = {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng.safetensors",
                    "trainer_state.json"}
# econlm_run.json's config.model as runs started before `model.init_adapter` existed wrote it (the
# Qwen 0.5B run of issue 14 among them); they resume with every later field at its default.
RUN_MODEL_FORMAT = ["base", "random_init", "quantization", "precision", "gradient_checkpointing"]


def test_a_checkpoint_in_the_saved_format_resumes_to_the_same_result(small_corpus, tmp_path):
    config = load_config("debug", [f"data.corpus={small_corpus}", "train.max_steps=4", "train.checkpoint_every=2",
                                   "train.eval_every=3", "train.keep_checkpoints=2"])
    run = train(config, tmp_path / "run", progress=False)
    step2, step4 = run / "checkpoints" / "step-2", run / "checkpoints" / "step-4"
    assert CHECKPOINT_FILES <= {p.name for p in step2.iterdir()}
    assert set(torch.load(step2 / "optimizer.pt", weights_only=True)) == {"optimizer", "scheduler"}
    assert "cpu" in load_file(str(step2 / "rng.safetensors"))
    saved = json.loads((step2 / "trainer_state.json").read_text())
    assert list(saved) == STATE_FORMAT and saved["step"] == 2 and saved["finished"] is False

    # Written field by field as the format says (not by this econlm's own writer), then resumed from.
    (step2 / "trainer_state.json").write_text(json.dumps({key: saved[key] for key in STATE_FORMAT}, indent=2))
    record = json.loads((run / "econlm_run.json").read_text())
    record["config"]["model"] = {key: record["config"]["model"][key] for key in RUN_MODEL_FORMAT}
    del record["init_adapter"]
    (run / "econlm_run.json").write_text(json.dumps(record, indent=2))
    finished = shutil.copy(step4 / "adapter_model.safetensors", tmp_path / "finished.safetensors")
    final_state = json.loads((step4 / "trainer_state.json").read_text())
    shutil.rmtree(step4)
    resume(run, progress=False)
    assert_same_weights(step4 / "adapter_model.safetensors", finished)
    resumed_state = json.loads((step4 / "trainer_state.json").read_text())
    assert resumed_state["finished"] and resumed_state["train_tokens"] == final_state["train_tokens"]
    assert resumed_state["best_step"] == final_state["best_step"]


def test_a_checkpoint_without_optimizer_state_resumes_with_a_fresh_optimizer_and_a_new_warm_up(
        small_corpus, tmp_path, capsys):
    config = load_config("debug", [f"data.corpus={small_corpus}", "train.max_steps=8", "train.checkpoint_every=2",
                                   "train.eval_every=3", "train.keep_checkpoints=4", "train.warmup_ratio=0.25"])
    reference = train(config, tmp_path / "reference", progress=False)
    ref_rows = {r["step"]: r for r in map(json.loads, (reference / "train_log.jsonl").read_text().splitlines())
                if "loss" in r}
    run = shutil.copytree(reference, tmp_path / "carried")

    for attempt in range(2):  # a second resume from the same checkpoint records the restart once
        for later in ("step-6", "step-8"):
            shutil.rmtree(run / "checkpoints" / later, ignore_errors=True)
        (run / "checkpoints" / "step-4" / "optimizer.pt").unlink(missing_ok=True)
        resume(run, progress=False)
    assert "checkpoint step-4 has no optimizer.pt" in capsys.readouterr().err

    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r for r in rows if "event" in r] == [{"step": 4, "event": "optimizer_restart", "rewarm_steps": 2}]
    got = {r["step"]: r for r in rows if "loss" in r}
    assert got[5]["loss"] == pytest.approx(ref_rows[5]["loss"], abs=1e-6)  # the weights, RNG and data of step 4
    assert got[5]["lr"] == pytest.approx(ref_rows[5]["lr"] / 2)  # the schedule, replayed, then ramped
    assert [got[s]["lr"] for s in (6, 7, 8)] == pytest.approx([ref_rows[s]["lr"] for s in (6, 7, 8)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["steps_done"] == 8 and metrics["optimizer_restarts"] == [4]
    assert json.loads((reference / "metrics.json").read_text())["optimizer_restarts"] == []


def test_a_trainer_state_with_other_fields_is_refused(tmp_path):
    path = tmp_path / "checkpoints" / "step-2" / "trainer_state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**dict.fromkeys(STATE_FORMAT), "step": 2, "epoch": 1}))
    with pytest.raises(UserError, match="not an econlm trainer state"):
        TrainState.read(path)
    path.write_text(json.dumps({key: 0 for key in STATE_FORMAT if key != "finished"}))
    with pytest.raises(UserError, match="not an econlm trainer state"):
        TrainState.read(path)
    path.write_text(json.dumps({**dict.fromkeys(STATE_FORMAT), "step": 3}))
    with pytest.raises(UserError, match="holds the state of step 3"):
        load_checkpoint(path.parent, None, None, None)


def test_pruning_and_start_up_clear_what_killed_writes_left(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / ".step-2.old").mkdir()  # a prune killed midway, earlier
    (tmp_path / "checkpoints" / ".step-2.old" / "optimizer.pt").write_bytes(b"x")
    (tmp_path / ".metrics.json.k3j2h1g0.tmp").write_text('{"fini')  # an atomic write killed midway
    (tmp_path / ".best-adapter.tmp").mkdir()
    pruned = prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in pruned] == ["step-2", "step-4"]
    assert [step for step, _ in checkpoint_dirs(tmp_path)] == [6]
    removed = remove_partial_saves(tmp_path)
    assert sorted(p.name for p in removed) == [".best-adapter.tmp", ".metrics.json.k3j2h1g0.tmp"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "checkpoints", "checkpoints/step-6", "checkpoints/step-6/trainer_state.json"]
