"""Training on two processes with the shipped DDP recipe (`accelerate launch`, gloo on this CPU):
the same adapter as one process training the same global batch, and a SIGKILL of one process
followed by `--resume` with the same launch finishes with the uninterrupted result."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from train_processes import assert_same_weights, launch, partial_saves, wait_for

from econlm.config import PRESETS_DIR, load_config
from econlm.errors import UserError
from econlm.training import resume, train
from econlm.training.checkpoint import PAUSE_ENV

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "configs" / "accelerate" / "ddp.yaml"  # what the docs tell users to pass
PROCESSES = 2
# Dropout off where one process is compared with two: the two draw their dropout masks from
# two generators, so the same examples would be masked otherwise than in one process.
NO_DROPOUT = ["lora.dropout=0"]
# Resumed from step 3: the first step whose two shares have other shapes, so from there the two
# processes' generators differ (dropout draws as many numbers as its input has elements).
RESUMED = ["train.max_steps=9", "train.checkpoint_every=3"]


def _free_port() -> int:
    """A port for the processes to meet on, so this test does not collide with another launch."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(args: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`econlm train ARGS` under the documented `accelerate launch` of PROCESSES processes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    return launch(args, log, extra_env, launcher=[str(accelerate), "launch", "--config_file", str(DDP_CONFIG),
                                                   "--num_processes", str(PROCESSES), "--main_process_port", str(_free_port())])


def _train_args(corpus: Path, overrides: list[str], out: Path) -> list[str]:
    sets = [arg for override in overrides for arg in ("--set", override)]
    return ["--config", "debug", "--corpus", str(corpus), *sets, "--out", str(out)]


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]


def _worker(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of `rank` among the launcher's children."""
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "econlm.cli" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    pytest.fail(f"no training process of rank {rank} under the launcher")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _assert_same_log(run: Path, reference: Path) -> None:
    """Every step's loss and gradient norm as in the reference: a gradient scaled wrongly across the
    processes, which Adam's update would hide from the weights, shows in the norm."""
    rows, ref_rows = _rows(run), _rows(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for got, want in zip(rows, ref_rows):
        if "loss" in want:
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
            assert got["tokens"] == want["tokens"]
        else:
            assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-5)


def test_the_documented_recipe_is_the_packaged_one():
    assert DDP_CONFIG.resolve() == (PRESETS_DIR / "accelerate" / "ddp.yaml").resolve()


def test_two_processes_train_what_one_process_trains(small_corpus, tmp_path):
    config = load_config("debug", [f"data.corpus={small_corpus}", *NO_DROPOUT])
    single = train(config, tmp_path / "single", progress=False)

    run, log = tmp_path / "ddp", tmp_path / "ddp.log"
    _finish(_launch(_train_args(small_corpus, NO_DROPOUT, run), log), log)

    record = json.loads((run / "econlm_run.json").read_text())
    assert record["world_size"] == PROCESSES
    assert record["schedule"] == json.loads((single / "econlm_run.json").read_text())["schedule"]
    _assert_same_log(run, single)
    for adapter in ("adapter_model.safetensors", "checkpoints/step-6/adapter_model.safetensors"):
        assert_same_weights(run / adapter, single / adapter)
    metrics, single_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, single))
    assert metrics["finished"] and metrics["best_step"] == single_metrics["best_step"]
    assert metrics["train_tokens"] == single_metrics["train_tokens"]


def test_a_killed_process_resumes_with_the_same_launch(small_corpus, tmp_path):
    # With dropout: each process has its own generator, which resume must give back to it.
    reference, log = tmp_path / "reference", tmp_path / "train.log"
    _finish(_launch(_train_args(small_corpus, RESUMED, reference), log), log)

    # SIGKILL process 1 while process 0 writes the step-6 checkpoint (the test hook holds every
    # save for a few seconds; step 3's is complete by then); the launcher then stops process 0.
    run = tmp_path / "killed"
    launcher = _launch(_train_args(small_corpus, RESUMED, run), log, {PAUSE_ENV: "4"})
    wait_for(lambda: any(p.name.startswith(".step-6.") for p in partial_saves(run)), launcher, log)
    worker = _worker(launcher, rank=1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)  # not our child: psutil sees it gone, not its status
    assert launcher.wait(timeout=120) != 0
    assert not (run / "checkpoints" / "step-6").exists()
    rng = load_file(str(run / "checkpoints" / "step-3" / "rng.safetensors"))
    assert not torch.equal(rng["cpu"], rng["cpu-rank1"])

    _finish(_launch(["--resume", str(run)], log), log)
    assert f"resuming from {run / 'checkpoints' / 'step-3'}" in log.read_text()
    _assert_same_log(run, reference)
    for adapter in ("adapter_model.safetensors", "checkpoints/step-9/adapter_model.safetensors"):
        assert_same_weights(run / adapter, reference / adapter)
    assert json.loads((run / "metrics.json").read_text())["finished"]

    # One process cannot continue what two started: its data split and generators differ.
    with pytest.raises(UserError, match=f"started with {PROCESSES} process"):
        resume(run, progress=False)
