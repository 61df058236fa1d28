"""`econlm bench serve`: the serving engines under the same load, side by side in one run.

Each engine is started the way a user starts it, `econlm serve --engine E --model M` on 127.0.0.1
in its own process (so the load generator never shares its GIL or cores' bookkeeping with it):

    vllm           vLLM's server, continuous batching, the LoRA adapter loaded by name
    llamacpp-q8_0  econlm's server over llama.cpp, q8_0 GGUF of the merged model (one request at a time)
    transformers   econlm's server over transformers float32 with the adapter (one request at a time)

Every engine gets the same prompts (title prompts for the first N test abstracts), greedy, the same
`max_tokens`, at each concurrency in turn, streamed so time to first token is seen. Per engine and
concurrency: aggregate generated tokens/s (the replies re-tokenised by the model's own tokenizer, the
same count for every engine), requests/s, p50/p95 latency and time to first token, lost requests,
and the share of prompts whose title equals greedy transformers' (the transformers engine at the
first concurrency). Before the measured rounds every engine gets one uncounted round of
max(concurrency) requests, on the test abstracts after the measured ones.

The rounds repeat the same prompts, and vLLM's prefix cache would serve a repeated prompt from the
KV it kept from an earlier round (the one-at-a-time servers keep at most the previous request's):
so vLLM runs with its development endpoints on (`VLLM_SERVER_DEV_MODE=1`) and its prefix cache is
emptied before every measured round. Within a round it caches as a user's server does (the shared
system prompt).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

from econlm.errors import UserError
from econlm.models import ModelRef

ENGINES = ("vllm", "llamacpp-q8_0", "transformers")
REFERENCE_ENGINE = "transformers"
CONCURRENCY = (1, 8, 32)
STARTUP_TIMEOUT_S = 900.0  # vLLM on 2 busy cores takes minutes to load
REQUEST_TIMEOUT_S = 900.0  # a request queued behind 31 others on a one-at-a-time server waits long
SERVED_NAME = "econlm"


def serve_argv(engine: str, model: str, name: str, port: int, threads: int | None = None) -> list[str]:
    """The `econlm serve` process a benchmark starts: `model` served by `engine` as `name` on
    127.0.0.1:`port`, on `threads` CPU threads (None: the engine's default)."""
    return [sys.executable, "-m", "econlm.cli", "serve", "--engine", engine, "--model", model, "--name", name,
            "--port", str(port), *(["--threads", str(threads)] if threads is not None else [])]


def engine_command(engine: str, model: ModelRef, port: int, threads: int | None = None) -> list[str]:
    """`econlm serve` for one engine; llama.cpp runs the q8_0 export of the (merged) model."""
    if engine in ("vllm", "transformers"):
        return serve_argv(engine, model.text, SERVED_NAME, port, threads)
    if engine.startswith("llamacpp-"):
        from econlm.bench.infer import cached_gguf

        gguf = cached_gguf(model, engine.removeprefix("llamacpp-"))
        return serve_argv("llamacpp", str(gguf), SERVED_NAME, port, threads)
    raise UserError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")


class EngineServer:
    """One `econlm serve` process for the duration of a `with` block; its log goes to `log_path`."""

    def __init__(self, command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        self.command, self.port, self.log_path, self.env = command, port, log_path, env
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def __enter__(self) -> Self:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise UserError(f"{' '.join(self.command[2:])} exited with status {self.process.returncode}; "
                                f"its log: {self.log_path}\n{_tail(self.log_path)}")
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                self.__exit__()
                raise UserError(f"{' '.join(self.command[2:])} did not answer /health in {STARTUP_TIMEOUT_S:.0f}s; log: {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.startup_s = time.monotonic() - started
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def empty_vllm_prefix_cache(port: int, api_key: str | None = None) -> None:
    """POST vLLM's /reset_prefix_cache (a development endpoint); it answers success=false while
    blocks are still held by finishing requests, so it is asked again for a while."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for _ in range(30):
        response = httpx.post(f"http://127.0.0.1:{port}/reset_prefix_cache", headers=headers, timeout=60)
        if response.status_code == 200 and response.json().get("success"):
            return
        time.sleep(1)
    raise UserError(f"vLLM on port {port} did not empty its prefix cache (last answer: HTTP {response.status_code} {response.text[:200]})")


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stream_requests(base_url: str, conversations: list[list[dict[str, str]]], concurrency: int, max_tokens: int,
                    api_key: str | None = None, progress: str | None = None) -> tuple[list[dict[str, Any]], float]:
    """Every conversation once, `concurrency` in flight, streamed; per request its reply, latency,
    time to first token and failure (None when it came back). Returns (records, wall seconds).
    With `progress`, a bar of that name counts finished requests (requests/s, ETA) on stderr."""
    import httpx
    from tqdm.auto import tqdm

    async def run() -> tuple[list[dict[str, Any]], float]:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits, headers=headers) as client:

            async def one(conversation) -> dict[str, Any]:
                body = {"model": SERVED_NAME, "messages": conversation, "max_tokens": max_tokens, "temperature": 0, "stream": True}
                async with gate:
                    started = time.perf_counter()
                    first, pieces, failure = None, [], None
                    try:
                        async with client.stream("POST", "/chat/completions", json=body) as response:
                            if response.status_code != 200:
                                failure = f"HTTP {response.status_code}"
                            else:
                                async for line in response.aiter_lines():
                                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                                        continue
                                    event = json.loads(line[5:])
                                    if event.get("error"):
                                        failure = "stream error"
                                        break
                                    for choice in event.get("choices", []):
                                        piece = (choice.get("delta") or {}).get("content")
                                        if piece:
                                            first = first if first is not None else time.perf_counter()
                                            pieces.append(piece)
                    except (httpx.HTTPError, json.JSONDecodeError) as exc:
                        failure = type(exc).__name__
                    done = time.perf_counter()
                    bar.update()
                    return {"reply": "".join(pieces), "latency_s": done - started,
                            "ttft_s": (first - started) if first is not None else None, "failure": failure}

            started = time.perf_counter()
            records = await asyncio.gather(*(one(c) for c in conversations))
            return list(records), time.perf_counter() - started

    with tqdm(total=len(conversations), desc=progress, unit="req", disable=progress is None) as bar:
        return asyncio.run(run())


def _quantile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4)


def summarize(records: list[dict[str, Any]], wall_s: float, count_tokens, reference: list[str] | None) -> dict[str, Any]:
    """One engine at one concurrency: throughput, latency, lost requests, agreement with the reference titles."""
    from econlm.evaluate import first_line

    answered = [r for r in records if r["failure"] is None]
    tokens = sum(count_tokens(r["reply"]) for r in answered)
    failures: dict[str, int] = {}
    for r in records:
        if r["failure"] is not None:
            failures[r["failure"]] = failures.get(r["failure"], 0) + 1
    row = {
        "requests": len(records),
        "ok": len(answered),
        "lost": len(records) - len(answered),
        "failures": failures,
        "generated_tokens": tokens,
        "wall_s": round(wall_s, 2),
        "tokens_per_s": round(tokens / wall_s, 2),
        "requests_per_s": round(len(answered) / wall_s, 3),
        "latency_p50_s": _quantile([r["latency_s"] for r in answered], 50),
        "latency_p95_s": _quantile([r["latency_s"] for r in answered], 95),
        "ttft_p50_s": _quantile([r["ttft_s"] for r in answered if r["ttft_s"] is not None], 50),
        "ttft_p95_s": _quantile([r["ttft_s"] for r in answered if r["ttft_s"] is not None], 95),
    }
    if reference is not None:
        same = sum(r["failure"] is None and first_line(r["reply"]) == first_line(ref) for r, ref in zip(records, reference))
        row["same_title_as_transformers"] = round(same / len(records), 3)
    return row


def run_serve_bench(
    model: ModelRef,
    corpus: Path,
    n_prompts: int = 200,
    concurrency: tuple[int, ...] = CONCURRENCY,
    max_tokens: int = 32,
    engines: tuple[str, ...] = ENGINES,
    log_dir: Path | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Start each engine in turn (on `threads` CPU threads each, else each engine's default), send
    it the prompts at every concurrency, stop it; the JSON-ready result."""
    from econlm.bench.common import load_average
    from econlm.bench.infer import title_prompts
    from econlm.models import load_tokenizer
    from econlm.paths import econlm_home
    from econlm.vllm_engine import free_port

    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise UserError(f"unknown engines {', '.join(unknown)} (choose from {', '.join(ENGINES)})")
    if REFERENCE_ENGINE in engines:  # the reference titles first, so every other engine is compared as it runs
        engines = (REFERENCE_ENGINE, *(e for e in engines if e != REFERENCE_ENGINE))
    needed = n_prompts + max(concurrency)
    conversations = title_prompts(corpus, needed)
    if len(conversations) < needed:
        raise UserError(f"{corpus}/test.jsonl has {len(conversations)} papers, fewer than --prompts {n_prompts} "
                        f"plus the {max(concurrency)} of the warm-up round")
    conversations, warm_up = conversations[:n_prompts], conversations[n_prompts:]
    tokenizer = load_tokenizer(model)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    log_dir = log_dir or econlm_home() / "bench-serve-logs"
    api_key = os.environ.get("ECONLM_API_KEY")  # the servers started below require it when it is set
    load_at_start = load_average()
    reference: list[str] | None = None
    results: dict[str, Any] = {}
    for engine in engines:
        port = free_port()
        command = engine_command(engine, model, port, threads)
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"} if engine == "vllm" else None
        with EngineServer(command, port, log_dir / f"{engine}.log", env) as server:
            rows: dict[str, Any] = {"command": " ".join(command[1:]), "startup_s": round(server.startup_s, 1)}
            # Warm-up, not counted: vLLM's first step at each batch size is slow (kernels set up per shape).
            stream_requests(server.base_url, warm_up, max(concurrency), max_tokens, api_key)
            for c in concurrency:
                if engine == "vllm":
                    empty_vllm_prefix_cache(port, api_key)
                records, wall = stream_requests(server.base_url, conversations, c, max_tokens, api_key,
                                                progress=f"{engine} c={c}")
                if engine == REFERENCE_ENGINE and reference is None:
                    reference = [r["reply"] for r in records]
                rows[f"c{c}"] = summarize(records, wall, count_tokens, reference)
        results[engine] = rows
    result: dict[str, Any] = {
        "model": model.text,
        "model_hash": model.hash,
        "prompts": {"task": "title", "n": n_prompts, "split": "test", "corpus": str(corpus),
                    "warm_up": f"test abstracts {n_prompts + 1}-{n_prompts + len(warm_up)}, not measured"},
        "vllm_prefix_cache": "emptied before every measured round",
        "decoding": {"greedy": True, "max_tokens": max_tokens, "stream": True},
        "concurrency": list(concurrency),
        "threads": threads,
        "agreement_reference": f"{REFERENCE_ENGINE} at c={concurrency[0]}" if reference is not None else None,
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "cpu_count": os.cpu_count(),
        "engines": results,
    }
    result["targets"] = targets(results, concurrency)
    return result


def measured(rows: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """An engine's rows by concurrency: the "c<N>" entries (beside its command and startup time)."""
    return {int(key[1:]): row for key, row in rows.items() if key[0] == "c" and key[1:].isdigit()}


def targets(results: dict[str, Any], concurrency: tuple[int, ...]) -> dict[str, Any]:
    """The issue's targets, where the run has what they compare: vLLM at its highest concurrency
    against the one-at-a-time transformers server at its lowest (>= 5x) and llama.cpp at the same
    concurrency (>= 2x); no request lost anywhere."""
    low, high = f"c{min(concurrency)}", f"c{max(concurrency)}"
    found: dict[str, Any] = {"lost_requests": sum(row["lost"] for rows in results.values() for row in measured(rows).values()),
                             "lost_requests_target": 0}
    vllm = results.get("vllm", {}).get(high)
    if vllm and "transformers" in results:
        found[f"vllm_{high}_vs_transformers_{low}"] = round(vllm["tokens_per_s"] / results["transformers"][low]["tokens_per_s"], 2)
        found[f"vllm_{high}_vs_transformers_{low}_target"] = 5.0
    if vllm and "llamacpp-q8_0" in results:
        found[f"vllm_{high}_vs_llamacpp_q8_0_{high}"] = round(vllm["tokens_per_s"] / results["llamacpp-q8_0"][high]["tokens_per_s"], 2)
        found[f"vllm_{high}_vs_llamacpp_q8_0_{high}_target"] = 2.0
    return found


def format_table(result: dict[str, Any]) -> str:
    """Engines x concurrency as a Markdown table, then the targets."""
    cols = [("tok/s", "tokens_per_s"), ("req/s", "requests_per_s"), ("p50 s", "latency_p50_s"), ("p95 s", "latency_p95_s"),
            ("TTFT p50 s", "ttft_p50_s"), ("TTFT p95 s", "ttft_p95_s"), ("lost", "lost"), ("same title", "same_title_as_transformers")]
    lines = ["| engine | concurrency | " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for engine, rows in result["engines"].items():
        for level, row in measured(rows).items():
            lines.append(f"| {engine} | {level} | " + " | ".join(str(row.get(k, "")) for _, k in cols) + " |")
    lines.append(f"{result['prompts']['n']} prompts, max_tokens {result['decoding']['max_tokens']}, greedy, streamed; "
                 f"load average {result['load_average_at_start']} at start, {result['load_average_at_end']} at end "
                 f"({result['cpu_count']} CPUs)")
    lines.append("targets: " + ", ".join(f"{k} {v}" for k, v in result["targets"].items()))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Aggregate tokens/s and p95 latency against concurrency, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for engine, rows in result["engines"].items():
        by_level = measured(rows)
        throughput.plot(list(by_level), [m["tokens_per_s"] for m in by_level.values()], "o-", label=engine)
        latency.plot(list(by_level), [m["latency_p95_s"] for m in by_level.values()], "o-", label=engine)
    for ax, label in ((throughput, "generated tokens/s (all requests)"), (latency, "p95 latency per request (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["concurrency"], [str(c) for c in result["concurrency"]])
        ax.set_xlabel("requests in flight")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"econlm bench serve: {result['prompts']['n']} title prompts, max_tokens {result['decoding']['max_tokens']}, "
                 f"load average {result['load_average_at_start'][0]} at start", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
