"""Shared measurement helpers for the benchmarks: peak RSS, machine description, result files."""

from __future__ import annotations

import os
import platform
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path

from econlm.allocator import current_allocator
from econlm.io import atomic_write_json


def peak_rss_mb() -> float:
    """Peak resident set size of this process's own memory so far (VmHWM). Not getrusage's
    ru_maxrss where /proc exists: Linux carries that over fork + exec, so a spawned child would
    report its parent's peak if that was higher."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "transformers", "peft", "accelerate"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "allocator": current_allocator(),  # glibc malloc vs jemalloc changes speed and RSS (econlm.allocator)
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_result(out: str | Path, name: str, result: dict) -> Path:
    """Write OUT (a .json file, or a directory that gets NAME-<timestamp>.json) atomically."""
    out = Path(out)
    if out.suffix != ".json":
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = out / f"{name}-{stamp}.json"
    atomic_write_json(out, {"benchmark": name, "machine": machine(), **result})
    return out
