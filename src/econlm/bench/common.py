"""Shared measurement helpers for the benchmarks: peak RSS, the load average, and result files (which carry the same
versions, date and machine as every other record, from `econlm.provenance`)."""

from __future__ import annotations

import os
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path

from econlm import provenance
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


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded: recorded with every result, as a timing is
    only honest when nothing else heavy shares the cores."""
    return [round(x, 2) for x in os.getloadavg()]


def write_result(out: str | Path, name: str, result: dict) -> Path:
    """Write OUT (a .json file, or a directory that gets NAME-<timestamp>.json) atomically."""
    out = Path(out)
    if out.suffix != ".json":
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = out / f"{name}-{stamp}.json"
    atomic_write_json(out, {"benchmark": name, **provenance.environment(), **result})
    return out
