"""kill -9 trials of `econlm train` (the tiny debug model) at each point a crash can leave its mark:
then `econlm train --resume` finishes the run, and the run directory equals an uninterrupted run's:
same adapter, metrics.json finished, no checkpoint beyond keep_checkpoints, no temp leftovers.

Each trial is one child process killed at its point and one resume in this process (through the
CLI), so the file stays within CI's time budget; the reference run is trained once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from train_processes import (
    assert_same_weights,
    kill,
    launch,
    logged_steps,
    partial_saves,
    wait_for,
)

from econlm.cli import cli
from econlm.config import load_config
from econlm.training import train
from econlm.training.checkpoint import PAUSE_AFTER_ENV, PAUSE_ENV, checkpoint_dirs

KEEP = 1
OVERRIDES = ["train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=2", f"train.keep_checkpoints={KEEP}"]
FINAL_STEP = 4


def _checkpoint_in_place(run: Path, step: int):
    return lambda: (run / "checkpoints" / f"step-{step}" / "trainer_state.json").is_file()


# kill point: (extra environment of the killed run, what it waits for, the checkpoint resume continues from)
KILL_POINTS = {
    # logged step 3 means step 4 is being computed: the step-2 checkpoint is the latest
    "mid-step": ({}, lambda run: lambda: max(logged_steps(run), default=0) >= 3, 2),
    # the test hook pauses the first save after the adapter weights, before the optimizer state
    "inside-a-checkpoint-write": ({PAUSE_ENV: "600"}, lambda run: lambda: bool(partial_saves(run)), None),
    "right-after-a-checkpoint": ({PAUSE_AFTER_ENV: "2:600"}, lambda run: _checkpoint_in_place(run, 2), 2),
    # the final checkpoint is in place; step-2 not yet pruned and metrics.json not yet final
    "right-after-the-final-checkpoint": ({PAUSE_AFTER_ENV: f"{FINAL_STEP}:600"},
                                         lambda run: _checkpoint_in_place(run, FINAL_STEP), FINAL_STEP),
}


@pytest.fixture(scope="module")
def reference(small_corpus, tmp_path_factory) -> Path:
    config = load_config("debug", [f"data.corpus={small_corpus}", *OVERRIDES])
    return train(config, tmp_path_factory.mktemp("uninterrupted") / "run", progress=False)


def _resume(run: Path) -> str:
    result = CliRunner().invoke(cli, ["train", "--resume", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stderr


def _leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_run_resumes_to_the_uninterrupted_result(point, small_corpus, reference, tmp_path):
    extra_env, kill_point, resumed_from = KILL_POINTS[point]
    run, log = tmp_path / "run", tmp_path / "train.log"
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    proc = launch(["--config", "debug", "--corpus", str(small_corpus), *sets, "--out", str(run)], log, extra_env)
    wait_for(kill_point(run), proc, log)
    kill(proc)
    metrics = run / "metrics.json"
    assert not metrics.is_file() or not json.loads(metrics.read_text())["finished"]
    if point == "right-after-the-final-checkpoint":  # what the probe found this kill leaves: one checkpoint too many
        assert [step for step, _ in checkpoint_dirs(run)] == [2, FINAL_STEP]

    said = _resume(run)

    finished_before_the_kill = point == "right-after-the-final-checkpoint"
    if finished_before_the_kill:
        assert (f"training had finished at step {FINAL_STEP}; completed what the interrupted run left undone: "
                f"removed step-2 (keep_checkpoints={KEEP}); wrote the final metrics.json") in said
    elif resumed_from is not None:
        assert f"resuming from {run / 'checkpoints' / f'step-{resumed_from}'}" in said
    else:
        assert "resuming from" not in said  # no complete checkpoint: the run starts over
    assert_same_weights(run / "adapter_model.safetensors", reference / "adapter_model.safetensors")
    assert_same_weights(run / "checkpoints" / f"step-{FINAL_STEP}" / "adapter_model.safetensors",
                        reference / "checkpoints" / f"step-{FINAL_STEP}" / "adapter_model.safetensors")
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert got["finished"] and got["steps_done"] == want["steps_done"] == FINAL_STEP
    assert got["best_step"] == want["best_step"] and got["train_tokens"] == want["train_tokens"]
    assert [step for step, _ in checkpoint_dirs(run)] == [step for step, _ in checkpoint_dirs(reference)] == [FINAL_STEP]
    assert logged_steps(run) == logged_steps(reference)
    assert not _leftovers(run)

    if finished_before_the_kill:  # once the bookkeeping is whole, resuming again says so and changes nothing
        before = metrics.read_bytes()
        assert f"training already finished at step {FINAL_STEP}" in _resume(run)
        assert metrics.read_bytes() == before
