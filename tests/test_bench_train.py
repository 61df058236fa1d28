"""`econlm bench train`'s choice of contenders (the runs themselves are benchmarks, not tests)."""

import pytest

from econlm.bench.train import econlm_autocasts, default_contenders
from econlm.config import load_config


@pytest.mark.parametrize(("precision", "have_jemalloc", "expected"), [
    ("fp32", True, ("A", "B", "econlm", "glibc")),
    ("bf16-autocast", True, ("A", "B", "C", "econlm", "glibc")),
    ("bf16-autocast", False, ("A", "B", "C", "econlm")),
])
def test_the_bf16_trainer_runs_whereeconlm_autocasts_and_glibc_beside_jemalloc(precision, have_jemalloc, expected):
    config = load_config("cpu-qwen2.5-0.5b-lora", [f"model.precision={precision}"])
    assert default_contenders(econlm_autocasts(config), have_jemalloc) == expected
