"""Training in a child process that a test SIGKILLs at a chosen point, and how the result is checked:
shared by tests/test_train_resume.py, tests/test_train_ddp.py and tests/reliability/test_kill_training.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def launch(args: list[str], log: Path, extra_env: dict[str, str] | None = None,
           launcher: list[str] | None = None) -> subprocess.Popen:
    """`econlm train ARGS` in a child process, its output appended to `log`; `launcher` runs the
    module instead of this Python (e.g. `accelerate launch ... `, which is given `-m econlm.cli`)."""
    env = {**os.environ, **(extra_env or {})}
    command = [*(launcher or [sys.executable]), "-m", "econlm.cli", "train", *args]
    with log.open("a") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(command, stdout=fh, stderr=fh, env=env)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Poll until `condition()` holds; fail (with the log) if the child exits or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"kill point not reached in {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def logged_steps(run: Path) -> list[int]:
    """The steps train_log.jsonl has a training row for (a half-written last line is skipped)."""
    path = run / "train_log.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in row:
            steps.append(row["step"])
    return steps


def partial_saves(run: Path) -> list[Path]:
    """Temp dirs of checkpoint saves that got as far as the adapter weights."""
    return [p for p in (run / "checkpoints").glob(".step-*.tmp") if (p / "adapter_model.safetensors").is_file()]


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal up to float noise: MKL's kernels can round differently with the memory alignment of
    their inputs, which differs between processes, two processes add a step's gradients in another
    order than one process accumulating them (measured: 6e-7 at most), and Adam scales such noise
    up on tiny gradients (1e-6 failed once in CI under load). A resume that restored the wrong
    step, data position or dropout RNG, a wrong split of a step over processes or a per-process
    loss normalisation moves the weights by a good part of lr = 1e-3, far outside this."""
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], atol=2e-5, rtol=1e-4, msg=key)
