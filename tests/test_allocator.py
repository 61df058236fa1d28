"""`econlm train` re-executes itself on jemalloc where the machine has it, and the training run
records which allocator it ran on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from econlm.allocator import OPT_OUT, jemalloc_library, preload_env, wants_jemalloc


def test_preload_is_added_once_and_keeps_what_was_preloaded():
    env = preload_env({"LD_PRELOAD": "libfoo.so", "HOME": "/h"}, "libjemalloc.so.2")
    assert env == {"LD_PRELOAD": "libjemalloc.so.2 libfoo.so", "HOME": "/h"}
    assert not wants_jemalloc(env)  # the re-executed process does not re-execute again
    assert preload_env({}, "libjemalloc.so.2")["LD_PRELOAD"] == "libjemalloc.so.2"


def test_opting_out_keeps_the_system_allocator():
    assert wants_jemalloc({})
    assert not wants_jemalloc({OPT_OUT: "system"})
    assert not wants_jemalloc({OPT_OUT: "SYSTEM", "LD_PRELOAD": ""})


@pytest.mark.parametrize("opt_out", [False, True])
def test_training_run_records_the_allocator_the_cli_chose(small_corpus, tmp_path, opt_out):
    env = {k: v for k, v in os.environ.items() if k not in (OPT_OUT, "LD_PRELOAD")}
    if opt_out:
        env[OPT_OUT] = "system"
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "econlm.cli", "train", "--config", "debug", "--out", str(run),
                           "--set", f"data.corpus={small_corpus}", "--set", "train.max_steps=1", "--set", "train.eval_every=1"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = "jemalloc" if jemalloc_library() and not opt_out else "system"
    assert json.loads((run / "econlm_run.json").read_text())["allocator"] == expected
