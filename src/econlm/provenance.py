"""Provenance: what every output records about how it was made, built the same way by every stage.

Training (econlm_run.json), evaluation, Q&A evaluation and baselines (metrics.json), the report and
the benchmarks take their library versions, machine description, date and data hashes from here,
so two outputs can be compared field by field. A model's part is its own `describe()` (the model
reference or the backend that loaded it): this module never hashes a model.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from econlm import __version__

# Every library whose version can change a figure econlm writes: model numerics (torch ...
# llama-cpp-python), metrics (rouge-score, sacrebleu, scikit-learn) and the baselines (xgboost).
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "bitsandbytes",
             "llama-cpp-python", "rouge-score", "sacrebleu", "scikit-learn", "xgboost")


def library_versions() -> dict[str, str]:
    """econlm's version and that of each of LIBRARIES installed here."""
    versions = {"econlm": __version__}
    for dist in LIBRARIES:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # as /proc/cpuinfo names them


def machine() -> dict[str, Any]:
    """The hardware and runtime: timings and memory figures are only comparable on the same ones."""
    from econlm.allocator import current_allocator

    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not cpu:
                    cpu = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        # One model name covers CPUs with and without these (AMD EPYC: AVX2 only, or AVX-512 with
        # bf16), and training speed doubles between them (bf16 autocast needs native bf16).
        "cpu_features": [flag for flag in CPU_FEATURES if flag in flags],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "allocator": current_allocator(),  # glibc malloc vs jemalloc changes speed and RSS (econlm.allocator)
    }


def utc_now() -> str:
    """The date every record carries: UTC, to the second, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def data_sha256(corpus_dir: str | Path) -> dict[str, str]:
    """sha256 of each split file of a corpus: what "the same data" means for every stage."""
    from econlm.data.corpus import split_files
    from econlm.io import sha256_file

    return {split: sha256_file(path) for split, path in split_files(corpus_dir).items()}


def environment() -> dict[str, Any]:
    """Library versions, date and machine, under the keys every record uses."""
    return {"versions": library_versions(), "date": utc_now(), "machine": machine()}


def build(*, corpus_dir: str | Path | None = None, model: Any = None, seed: int | None = None,
          **fields: Any) -> dict[str, Any]:
    """A stage's provenance block: the `fields` only it knows (task, decoding, timings), then the
    corpus and its hashes, the model's `describe()`, the seed and the environment, the same way for all."""
    record = dict(fields)
    if corpus_dir is not None:
        record["corpus"] = str(Path(corpus_dir).resolve())
        record["data_sha256"] = data_sha256(corpus_dir)
    if model is not None:
        record["model"] = model.describe()
    if seed is not None:
        record["seed"] = seed
    return {**record, **environment()}
