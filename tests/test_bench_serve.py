"""`econlm bench serve`, shrunk: a tiny random model behind the real `econlm serve` processes
(transformers and llama.cpp q8_0 of it), a few prompts at two concurrencies, every request counted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from econlm.bench.serve import format_table, plot, run_serve_bench, summarize
from econlm.models import ModelRef
from gguf_models import tiny_model_dir


def test_tiny_engines_side_by_side(home, small_corpus, tmp_path):
    model = ModelRef.parse(str(tiny_model_dir(tmp_path)))
    result = run_serve_bench(model, small_corpus, n_prompts=3, concurrency=(1, 2), max_tokens=4,
                             engines=("llamacpp-q8_0", "transformers"), log_dir=tmp_path / "logs")
    assert list(result["engines"]) == ["transformers", "llamacpp-q8_0"]  # the reference runs first
    for engine, rows in result["engines"].items():
        assert rows["startup_s"] > 0 and f"serve --engine {engine.split('-')[0]} " in rows["command"] and " --port " in rows["command"]
        for level in ("c1", "c2"):
            row = rows[level]
            assert (row["requests"], row["ok"], row["lost"]) == (3, 3, 0), (engine, row)
            assert row["generated_tokens"] > 0 and row["tokens_per_s"] > 0 and row["requests_per_s"] > 0
            assert 0 < row["ttft_p50_s"] <= row["latency_p50_s"] <= row["latency_p95_s"]
            assert 0.0 <= row["same_title_as_transformers"] <= 1.0
    assert result["engines"]["transformers"]["c1"]["same_title_as_transformers"] == 1.0
    assert result["targets"]["lost_requests"] == 0 and "vllm_c2_vs_transformers_c1" not in result["targets"]
    table = format_table(result)
    assert "| transformers | 1 |" in table and "| llamacpp-q8_0 | 2 |" in table
    assert plot(result, tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_servers_that_require_the_key_get_it(home, small_corpus, tmp_path, monkeypatch):
    """With $ECONLM_API_KEY exported, the servers the bench starts require it: its requests send it."""
    monkeypatch.setenv("ECONLM_API_KEY", "bench-key")
    model = ModelRef.parse(str(tiny_model_dir(tmp_path)))
    result = run_serve_bench(model, small_corpus, n_prompts=2, concurrency=(1,), max_tokens=2,
                             engines=("transformers",), log_dir=tmp_path / "logs")
    row = result["engines"]["transformers"]["c1"]
    assert (row["ok"], row["lost"], row["failures"]) == (2, 0, {})


def test_lost_requests_and_disagreement_are_counted():
    records = [{"reply": "A title\nmore", "latency_s": 2.0, "ttft_s": 0.5, "failure": None},
               {"reply": "", "latency_s": 1.0, "ttft_s": None, "failure": "HTTP 503"},
               {"reply": "Other", "latency_s": 4.0, "ttft_s": 1.0, "failure": None}]
    row = summarize(records, 2.0, lambda text: len(text.split()), ["A title", "B", "Different"])
    assert (row["ok"], row["lost"], row["failures"]) == (2, 1, {"HTTP 503": 1})
    assert row["generated_tokens"] == 4 and row["tokens_per_s"] == 2.0 and row["requests_per_s"] == 1.0
    assert row["same_title_as_transformers"] == round(1 / 3, 3)


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "1,x"], "comma-separated whole numbers"),
    (["--concurrency", "0"], "at least 1"),
    (["--engines", "tgi"], "unknown engines tgi"),
])
def test_bad_options_are_one_line(args, message, home, small_corpus):
    done = subprocess.run([sys.executable, "-m", "econlm.cli", "bench", "serve", "--corpus", str(small_corpus), *args],
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
