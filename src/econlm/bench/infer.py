"""`econlm bench infer`: transformers vs llama.cpp inference on the same prompts, side by side.

Every engine gets the same token ids (titles for the first N test abstracts, rendered with the
training chat template by the HF tokenizer), decodes greedily at batch size 1 and runs in its own
spawned process, so each one's peak RSS is its own (llama.cpp's process never imports torch).
Per engine: prompt tokens/s (prompt tokens / time to first token), decode tokens/s (tokens after
the first / time after the first), time to first token, peak RSS, and the memory-bandwidth
ceiling: at batch size 1 every weight is read once per new token, so decode tokens/s cannot beat
measured copy bandwidth / bytes of weights.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from econlm.bench.common import load_average, peak_rss_mb
from econlm.models import ModelRef

ENGINES = ("hf-fp32", "hf-bf16", "llamacpp-f16", "llamacpp-q8_0", "llamacpp-q4_k_m")


def default_model() -> ModelRef:
    """The shipped econlm adapter when it is there, else the base model."""
    from econlm.models import DEFAULT_MODEL, SHIPPED_ADAPTER_DIR, SHIPPED_ADAPTER_NAME

    return ModelRef.parse(SHIPPED_ADAPTER_NAME if (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file() else DEFAULT_MODEL)


def cached_gguf(model_ref: ModelRef, quant: str) -> Path:
    """The model (an adapter merged into its base) exported to GGUF once per content hash and
    quantisation, under $ECONLM_HOME/gguf/, for the benchmarks' llama.cpp engines."""
    from econlm.export import export_gguf
    from econlm.paths import econlm_home

    path = econlm_home() / "gguf" / f"{model_ref.name}-{model_ref.hash[:12]}" / f"model.{quant}.gguf"
    if not path.is_file():
        export_gguf(model_ref, path, quant, progress=False)
    return path


def copy_bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 5, threads: int | None = None) -> float:
    """Best-of-N memory copy bandwidth in bytes/s, counting bytes read + written (the STREAM
    "copy" convention), with the array split over `threads` threads (numpy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    threads = threads or os.cpu_count() or 1
    src = np.ones(n_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    parts = list(zip(np.array_split(dst, threads), np.array_split(src, threads)))
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(lambda pair: np.copyto(pair[0], pair[1]), parts))
            best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best


def title_prompts(corpus: Path, n: int) -> list[list[dict[str, str]]]:
    """Title-task chat prompts (system + user) for the first n test abstracts."""
    from itertools import islice

    from econlm.data.templates import TITLE
    from econlm.types import Paper

    papers = list(islice(Paper.read_jsonl(corpus / "test.jsonl"), n))
    return [[m.model_dump() for m in TITLE.prompt(abstract=p.abstract)] for p in papers]


# ---------------------------------------------------------------------------- engine workers
# Each runs in a spawned child process and returns per-prompt timings plus its peak RSS.


def _time_transformers(model_ref: ModelRef, dtype: str, prompts: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from econlm.models import load_model

    class Clock(StoppingCriteria):
        """Records when each new token is ready (generate calls it once per step)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    started = time.perf_counter()
    model, tokenizer = load_model(model_ref, dtype=dtype, device="cpu", merge_adapter=True)
    load_s = time.perf_counter() - started
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once

    def run(ids: list[int]) -> tuple[dict[str, float], list[int]]:
        clock = Clock()
        input_ids = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                do_sample=False, stopping_criteria=StoppingCriteriaList([clock]),
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new = out[0, len(ids):].tolist()
        return {"ttft_s": clock.times[0] - t0, "decode_s": clock.times[-1] - clock.times[0], "new_tokens": len(new)}, new

    run(prompts[0])  # warm-up
    timings, outputs = zip(*(run(ids) for ids in prompts))
    return {"load_s": load_s, "weight_bytes": weight_bytes, "per_prompt": list(timings), "outputs": list(outputs)}


def _time_llama_cpp(gguf_path: str, prompts: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    import llama_cpp

    started = time.perf_counter()
    llm = llama_cpp.Llama(gguf_path, n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    load_s = time.perf_counter() - started
    eos = llm.token_eos()

    def run(ids: list[int]) -> tuple[dict[str, float], list[int]]:
        llm.reset()  # no prefix reuse between prompts: prefill is measured in full, as for transformers
        times, new = [], []
        t0 = time.perf_counter()
        for token in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            times.append(time.perf_counter())
            new.append(token)
            if token == eos or len(new) == max_new_tokens:
                break
        return {"ttft_s": times[0] - t0, "decode_s": times[-1] - times[0], "new_tokens": len(new)}, new

    run(prompts[0])  # warm-up
    timings, outputs = zip(*(run(ids) for ids in prompts))
    llm.close()
    return {"load_s": load_s, "weight_bytes": os.path.getsize(gguf_path), "per_prompt": list(timings), "outputs": list(outputs)}


def _engine_worker(engine: str, source: ModelRef | str, prompts: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    if engine.startswith("hf-"):
        result = _time_transformers(source, {"hf-fp32": "float32", "hf-bf16": "bfloat16"}[engine], prompts, max_new_tokens)
    else:
        result = _time_llama_cpp(source, prompts, max_new_tokens)
    return {**result, "peak_rss_mb": round(peak_rss_mb(), 1)}


def _in_child(*args: Any) -> dict[str, Any]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_engine_worker, args)


# ---------------------------------------------------------------------------- the benchmark


def _summary(raw: dict[str, Any], bandwidth: float, prompt_lengths: list[int]) -> dict[str, Any]:
    per = raw["per_prompt"]
    ttft = sum(p["ttft_s"] for p in per)
    decoded = sum(p["new_tokens"] - 1 for p in per)
    decode_s = sum(p["decode_s"] for p in per)
    decode_tps = decoded / decode_s if decode_s else float("nan")
    ceiling = bandwidth / raw["weight_bytes"]
    return {
        "prompt_tokens_per_s": round(sum(prompt_lengths) / ttft, 1),
        "decode_tokens_per_s": round(decode_tps, 1),
        "ttft_ms_median": round(1000 * statistics.median(p["ttft_s"] for p in per), 1),
        "new_tokens": sum(p["new_tokens"] for p in per),
        "peak_rss_mb": raw["peak_rss_mb"],
        "load_s": round(raw["load_s"], 2),
        "weight_mb": round(raw["weight_bytes"] / 2**20, 1),
        "bandwidth_ceiling_tokens_per_s": round(ceiling, 1),
        "fraction_of_ceiling": round(decode_tps / ceiling, 3),
    }


def run_infer_bench(
    model_ref: ModelRef,
    corpus: Path,
    n_prompts: int = 50,
    max_new_tokens: int = 32,
    engines: tuple[str, ...] = ENGINES,
    load_test: bool = True,
) -> dict[str, Any]:
    """Run every engine on the same prompts; returns the JSON-ready result."""
    from econlm.errors import UserError
    from econlm.models import load_tokenizer

    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise UserError(f"unknown engines {', '.join(unknown)} (choose from {', '.join(ENGINES)})")
    load_at_start = load_average()
    conversations = title_prompts(corpus, n_prompts)
    tokenizer = load_tokenizer(model_ref)
    prompts = [
        tokenizer(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for c in conversations
    ]
    prompt_lengths = [len(p) for p in prompts]

    ggufs = {engine.removeprefix("llamacpp-"): cached_gguf(model_ref, engine.removeprefix("llamacpp-"))
             for engine in engines if engine.startswith("llamacpp-")}

    bandwidth = copy_bandwidth()
    results: dict[str, Any] = {}
    outputs: dict[str, list[list[int]]] = {}
    for engine in engines:
        source = str(ggufs[engine.removeprefix("llamacpp-")]) if engine.startswith("llamacpp-") else model_ref
        raw = _in_child(engine, source, prompts, max_new_tokens)
        outputs[engine] = raw["outputs"]
        results[engine] = _summary(raw, bandwidth, prompt_lengths)
    reference = outputs.get("hf-fp32")
    if reference is not None:
        for engine, outs in outputs.items():
            # Greedy output identical to transformers fp32: a quick check that the export is faithful.
            results[engine]["same_output_as_hf_fp32"] = round(sum(a == b for a, b in zip(outs, reference)) / len(reference), 3)

    result: dict[str, Any] = {
        "model": model_ref.text,
        "model_hash": model_ref.hash,
        "prompts": {"task": "title", "n": len(prompts), "split": "test", "corpus": str(corpus),
                    "mean_prompt_tokens": round(statistics.mean(prompt_lengths), 1)},
        "decoding": {"greedy": True, "max_new_tokens": max_new_tokens, "batch_size": 1, "threads": os.cpu_count()},
        "copy_bandwidth_gb_per_s": round(bandwidth / 1e9, 2),
        "load_average_at_start": load_at_start,
        "engines": results,
    }
    if "hf-fp32" in results and "llamacpp-q8_0" in results:
        q8, fp32 = results["llamacpp-q8_0"], results["hf-fp32"]
        result["targets"] = {
            "q8_0_decode_vs_hf_fp32": round(q8["decode_tokens_per_s"] / fp32["decode_tokens_per_s"], 2),
            "q8_0_decode_vs_hf_fp32_target": 5.0,
            "q8_0_fraction_of_ceiling": q8["fraction_of_ceiling"],
            "q8_0_fraction_of_ceiling_target": 0.7,
        }
    if load_test and "q8_0" in ggufs:
        result["serve_load_test"] = serve_load_test(ggufs["q8_0"], conversations)
    return result


def serve_load_test(gguf_path: Path, conversations: list[list[dict[str, str]]], n_requests: int = 200, concurrency: int = 8, max_tokens: int = 16) -> dict[str, Any]:
    """`econlm serve` over llama.cpp on 127.0.0.1: bounded requests, zero may be lost."""
    from econlm.backends.llamacpp import LlamaCppBackend
    from econlm.serve import create_app, load_test, serving

    questions = [c[-1]["content"] for c in conversations]
    backend = LlamaCppBackend(gguf_path)
    with serving(create_app(backend, "econlm")) as base_url:
        report = load_test(base_url, "econlm", questions, n_requests=n_requests, concurrency=concurrency, max_tokens=max_tokens)
    return {"backend": backend.name, **report}


def format_table(result: dict[str, Any]) -> str:
    """The engines side by side, as a Markdown table."""
    cols = [
        ("engine", None), ("prompt tok/s", "prompt_tokens_per_s"), ("decode tok/s", "decode_tokens_per_s"),
        ("TTFT ms", "ttft_ms_median"), ("peak RSS MB", "peak_rss_mb"), ("weights MB", "weight_mb"),
        ("ceiling tok/s", "bandwidth_ceiling_tokens_per_s"), ("of ceiling", "fraction_of_ceiling"),
        ("= fp32 output", "same_output_as_hf_fp32"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for engine, row in result["engines"].items():
        lines.append("| " + " | ".join([engine] + [str(row.get(key, "")) for _, key in cols[1:]]) + " |")
    lines.append(f"copy bandwidth {result['copy_bandwidth_gb_per_s']} GB/s; load average at start {result['load_average_at_start']}")
    if "serve_load_test" in result:
        s = result["serve_load_test"]
        lines.append(f"serve: {s['ok']}/{s['requests']} ok ({s['concurrency']} concurrent), p50 {s['p50_s']}s, p95 {s['p95_s']}s")
    return "\n".join(lines)
