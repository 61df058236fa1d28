"""Benchmark helpers: a spawned contender's peak RSS is its own, not its parent's."""

from __future__ import annotations

import multiprocessing
import sys

import pytest

from econlm.bench.common import peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_spawned_child_reports_its_own_peak_rss():
    grown = bytearray(400 * 2**20)
    grown[::4096] = b"\x01" * len(grown[::4096])  # touch every page so it is resident
    parent_peak = peak_rss_mb()
    del grown
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child_peak = pool.apply(peak_rss_mb)
    assert parent_peak > 400
    assert child_peak < parent_peak - 300  # ru_maxrss would have reported the parent's peak here
