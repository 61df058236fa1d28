"""`econlm bench eval`: evaluation throughput, batched vs one at a time, same model and inputs.

Title generation: titles per second for the first N test abstracts, generated greedily in
left-padded batches (`TransformersBackend.chat`, batch size B) vs one `generate` call per abstract
(batch size 1). The two sets of titles are compared, so a speed-up never hides a change of output.

Classification: examples per second for constrained scoring of the three answers, batched with the
shared prompt cache vs one example at a time; and what `econlm eval` runs per example, the scores
plus the free-generation reply, from one prompt pass (`score_options_and_chat`) vs two
(`score_options`, then `chat`), both batched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from econlm.backends import Decoding
from econlm.models import ModelRef


def _timed(fn) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def bench_eval(model: ModelRef, corpus_dir: str | Path, n: int = 32, batch_size: int = 16, max_new_tokens: int = 40,
               dtype: str = "float32") -> dict[str, Any]:
    """Measure both tasks at batch size `batch_size` and 1; returns the result dict."""
    from econlm.backends.hf import TransformersBackend
    from econlm.bench.common import load_average, peak_rss_mb
    from econlm.data.templates import CLASSIFY, TITLE
    from econlm.evaluate import ANSWERS, FREE_GENERATION_DECODING, first_line, load_split

    load_at_start = load_average()
    papers = load_split(corpus_dir, "test")[:n]
    backend = TransformersBackend(model, dtype=dtype, batch_size=batch_size)
    decoding = Decoding(max_new_tokens=max_new_tokens)
    title_prompts = [[m.model_dump() for m in TITLE.prompt(abstract=p.abstract)] for p in papers]
    classify_prompts = [[m.model_dump() for m in CLASSIFY.prompt(abstract=p.abstract)] for p in papers]

    backend.chat(title_prompts[:1], Decoding(max_new_tokens=2))  # warm-up: first-call allocations
    batched_titles, batched_s = _timed(lambda: backend.chat(title_prompts, decoding))
    batched_scores, batched_score_s = _timed(lambda: backend.score_options(classify_prompts, ANSWERS))
    (shared_scores, shared_replies), shared_s = _timed(
        lambda: backend.score_options_and_chat(classify_prompts, ANSWERS, FREE_GENERATION_DECODING))
    two_pass_replies, two_pass_s = _timed(lambda: backend.chat(classify_prompts, FREE_GENERATION_DECODING))
    two_pass_s += batched_score_s  # the second pass's scores are the batched ones above
    backend.batch_size = 1  # the same loaded model, one example per call
    single_titles, single_s = _timed(lambda: [backend.chat([c], decoding)[0] for c in title_prompts])
    single_scores, single_score_s = _timed(lambda: backend.score_options(classify_prompts, ANSWERS))

    same_titles = sum(first_line(a[0]) == first_line(b[0]) for a, b in zip(batched_titles, single_titles))
    same_choice = sum(max(range(3), key=a.__getitem__) == max(range(3), key=b.__getitem__)
                      for a, b in zip(batched_scores, single_scores))
    max_score_diff = max(abs(x - y) for a, b in zip(batched_scores, single_scores) for x, y in zip(a, b))
    return {
        "model": backend.describe(),
        "n_examples": len(papers),
        "batch_size": batch_size,
        "decoding": {"max_new_tokens": max_new_tokens, "greedy": True},
        "title_generation": {
            "batched_titles_per_s": len(papers) / batched_s,
            "one_at_a_time_titles_per_s": len(papers) / single_s,
            "speedup": single_s / batched_s,
            "batched_seconds": batched_s,
            "one_at_a_time_seconds": single_s,
            "identical_titles": f"{same_titles}/{len(papers)}",
        },
        "classification_constrained_scoring": {
            "batched_examples_per_s": len(papers) / batched_score_s,
            "one_at_a_time_examples_per_s": len(papers) / single_score_s,
            "speedup": single_score_s / batched_score_s,
            "same_predicted_label": f"{same_choice}/{len(papers)}",
            "max_abs_logprob_difference": max_score_diff,
        },
        "classification_scores_and_free_reply": {
            "one_prompt_pass_examples_per_s": len(papers) / shared_s,
            "two_prompt_passes_examples_per_s": len(papers) / two_pass_s,
            "speedup": two_pass_s / shared_s,
            "identical_free_replies": f"{sum(a == b for a, b in zip(shared_replies, two_pass_replies))}/{len(papers)}",
            "max_abs_logprob_difference": max(
                abs(x - y) for a, b in zip(shared_scores, batched_scores) for x, y in zip(a, b)),
            "free_generation_max_new_tokens": FREE_GENERATION_DECODING.max_new_tokens,
        },
        "peak_rss_mb": peak_rss_mb(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
    }
