"""`econlm bench qa-teacher`: Q&A teachers side by side on the same abstracts, through `econlm qa synthesize`.

Each teacher is a model served the way a user serves it (`econlm serve --engine E --model M`, its own
process on 127.0.0.1). A contender is a teacher with one synthesis prompt: given several prompts,
every teacher is tried with each (its server shared by its prompts). All servers are started first
and stay up; the papers then go to the contenders in alternating rounds of `round_size` (round k is
`qa synthesize --limit k*round_size` for each contender in turn, which extends the same seeded
subset), so other jobs starting or stopping on a shared machine slow every contender alike and the
ratios between them stay fair.

Per contender, over all its papers: the filter counts (the kept-pair rate and each filter's share of
the candidate pairs), papers/s and generated tokens/s over the seconds its rounds took (the replies,
kept whole in the progress file, re-tokenised by the teacher's own tokenizer, end-of-turn token not
counted), and the 1-minute load average sampled while its rounds ran.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from econlm.backends import Decoding, parse_spec
from econlm.bench.serve import EngineServer, serve_argv
from econlm.data.templates import SYNTHESIS_PAIRS, ChatTemplate
from econlm.errors import UserError
from econlm.models import ModelRef
from econlm.qa.synthesize import FILTER_NAMES, TEACHER_DECODING, read_progress, sidecar_paths, synthesize

SERVE_ENGINES = ("llamacpp", "vllm", "transformers")  # what `econlm serve --engine` runs
LOAD_SAMPLE_S = 10.0


@dataclass(frozen=True)
class Teacher:
    """One contender: the engine `econlm serve` runs it with and the model, parsed once."""

    engine: str
    model: ModelRef

    @classmethod
    def parse(cls, text: str) -> Teacher:
        engine, sep, model = text.partition(":")
        if not sep or engine not in SERVE_ENGINES or not model:
            raise UserError(f"--teacher {text!r}: give ENGINE:MODEL with ENGINE one of {', '.join(SERVE_ENGINES)}")
        return cls(engine, ModelRef.parse(model))

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.model.name}"

    def serve_command(self, port: int, threads: int | None = None) -> list[str]:
        """`threads`: CPU threads the engine computes on (`econlm serve --threads`); None, its default."""
        return serve_argv(self.engine, self.model.text, self.model.name, port, threads)

    def token_counter(self) -> Callable[[str], int]:
        """Tokens of a reply by the model's own tokenizer: a GGUF's vocabulary alone where there is
        one (converting a packaged model to load a transformers tokenizer would cost minutes and GBs)."""
        if self.model.kind in ("packaged", "gguf"):
            import llama_cpp

            vocab = llama_cpp.Llama(str(self.model.gguf_file()), vocab_only=True, verbose=False)
            return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        from econlm.models import load_tokenizer

        tokenizer = load_tokenizer(self.model)
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class Contender:
    """A served teacher asked with one prompt: `label` names it in the result (and its files)."""

    label: str
    base_url: str
    served_name: str  # the model name the server answers to
    prompt: ChatTemplate = SYNTHESIS_PAIRS

    @property
    def file_stem(self) -> str:
        return self.label.replace(":", "-").replace(" ", "-")


class LoadSampler:
    """The 1-minute load average every LOAD_SAMPLE_S seconds, filed under whichever label is current."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self.current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def switch(self, label: str | None) -> None:
        """File the next samples under `label` (None: under nobody), starting with one taken now."""
        self.current = label
        self._sample()

    def _sample(self) -> None:
        if self.current is not None:
            self.samples.setdefault(self.current, []).append(os.getloadavg()[0])

    def _run(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_S):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, label: str) -> dict[str, Any]:
        values = self.samples.get(label, [])
        if not values:
            return {"samples": 0}
        return {"samples": len(values), "mean": round(sum(values) / len(values), 2), "min": round(min(values), 2),
                "max": round(max(values), 2)}


def teacher_row(progress: list[dict[str, Any]], seconds: float, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """One teacher's numbers from its progress records and the seconds its rounds took."""
    counts = {key: sum(r["counts"].get(key, 0) for r in progress) for key in ("unparsable", "candidates", *FILTER_NAMES, "kept")}
    candidates, papers = counts["candidates"], len(progress)
    tokens = sum(count_tokens(r["reply"]) for r in progress)
    return {
        "papers": papers,
        "papers_with_pairs": sum(r["counts"].get("kept", 0) > 0 for r in progress),
        "counts": counts,
        "kept_per_candidate": round(counts["kept"] / candidates, 4) if candidates else 0.0,
        "kept_per_paper": round(counts["kept"] / papers, 3) if papers else 0.0,
        "share_of_candidates": {name: round(counts[name] / candidates, 4) if candidates else 0.0 for name in FILTER_NAMES},
        "unparsable_per_paper": round(counts["unparsable"] / papers, 4) if papers else 0.0,
        "seconds": round(seconds, 3),
        "papers_per_s": round(papers / seconds, 4) if seconds else None,
        "generated_tokens": tokens,
        "generated_tokens_per_paper": round(tokens / papers, 1) if papers else 0.0,
        "tokens_per_s": round(tokens / seconds, 2) if seconds else None,
        "request_seconds_median": _median([r["seconds"] for r in progress]),
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def compare_teachers(
    contenders: list[Contender],
    corpus_dir: str | Path,
    work_dir: str | Path,
    token_counters: dict[str, Callable[[str], int]],
    *,
    split: str = "validation",
    limit: int = 50,
    round_size: int = 10,
    seed: int = 0,
    concurrency: int = 1,
    n_pairs: int = 3,
    decoding: Decoding = TEACHER_DECODING,
    timeout: float = 900.0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run `qa synthesize` for each contender in alternating rounds; the per-contender rows (by
    label; `token_counters` by label too) and ratios against the first contender. `on_round`
    gets the partial result after every round (so an interrupted run keeps what it has). A
    request that failed (after the backend's retries; `timeout` is generous, since a one-at-a-time
    server on busy cores is slow) is counted, and its paper asked again in the next round."""
    if limit < 1 or round_size < 1:
        raise UserError(f"--limit and --round must be at least 1, got {limit} and {round_size}")
    work_dir = Path(work_dir)
    labels = [c.label for c in contenders]
    outputs = {c.label: work_dir / f"{c.file_stem}.jsonl" for c in contenders}
    seconds = dict.fromkeys(labels, 0.0)
    failed = dict.fromkeys(labels, 0)
    errors: dict[str, list[str]] = {label: [] for label in labels}
    result: dict[str, Any] = {"split": split, "limit": limit, "round_size": round_size, "seed": seed,
                              "concurrency": concurrency, "pairs_asked": n_pairs, "decoding": asdict(decoding),
                              "rounds_done": 0, "teachers": {}}
    with LoadSampler() as loads:
        for stop in range(round_size, limit + round_size, round_size):
            for contender in contenders:
                label = contender.label
                loads.switch(label)
                # Timed here, not from the run summary: that rounds to 0.1 s, which is 0 for a quick round.
                started = time.perf_counter()
                summary = synthesize(corpus_dir, split, parse_spec(f"openai:{contender.served_name}"), outputs[label],
                                     limit=min(stop, limit), seed=seed, concurrency=concurrency, n_pairs=n_pairs,
                                     prompt=contender.prompt, decoding=decoding, timeout=timeout,
                                     base_url=contender.base_url, progress=False)
                seconds[label] += time.perf_counter() - started
                loads.switch(None)
                run = summary["last_run"]
                failed[label] += run["failed"]
                errors[label] += run["errors"]
                row = teacher_row(read_progress(sidecar_paths(outputs[label])[0]), seconds[label], token_counters[label])
                result["teachers"][label] = {**row, "prompt": contender.prompt.id, "failed_requests": failed[label],
                                             "errors": errors[label][:5], "load_average_1m": loads.summary(label),
                                             "output": str(outputs[label])}
            result["rounds_done"] += 1
            result["ratios_vs_first"] = ratios(result["teachers"])
            if on_round is not None:
                on_round(result)
    return result


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each teacher's throughput and kept-pair rate over the first teacher's."""
    first = next(iter(rows.values()))

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b else None

    return {label: {key: ratio(row[key], first[key]) for key in ("papers_per_s", "tokens_per_s", "kept_per_candidate", "kept_per_paper")}
            for label, row in rows.items()}


def run_qa_teacher_bench(
    teachers: list[Teacher],
    corpus_dir: Path,
    result_path: Path,
    threads: int | None = None,
    prompts: tuple[ChatTemplate, ...] = (SYNTHESIS_PAIRS,),
    **options: Any,
) -> dict[str, Any]:
    """Serve every teacher (on `threads` CPU threads each, else each engine's default), compare each
    with each of `prompts` (`compare_teachers`; labels "ENGINE:MODEL", with " PROMPT-ID" added when
    there are several prompts), stop them; writes `result_path` (complete: false until the last
    round) and a folder beside it with each contender's pairs."""
    import contextlib

    from econlm.bench.common import load_average, write_result
    from econlm.vllm_engine import free_port

    labels = [t.label for t in teachers]
    if len(set(labels)) != len(labels):
        raise UserError(f"--teacher: the same teacher twice ({', '.join(labels)})")
    prompt_ids = [p.id for p in prompts]
    if not prompts or len(set(prompt_ids)) != len(prompt_ids):
        raise UserError(f"--prompt: give each prompt once ({', '.join(prompt_ids)})")
    work_dir = result_path.with_suffix("")
    log_dir = work_dir / "logs"
    # OpenMP settings the servers inherit: llama.cpp's ggml runs as many threads as OpenMP lets it.
    thread_env = {k: os.environ[k] for k in ("OMP_THREAD_LIMIT", "OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
    header: dict[str, Any] = {"corpus": str(corpus_dir), "cpu_count": os.cpu_count(), "threads": threads,
                              "thread_environment": thread_env,
                              "load_average_at_start": load_average(), "servers": {}}
    with contextlib.ExitStack() as stack:
        contenders: list[Contender] = []
        counters: dict[str, Callable[[str], int]] = {}
        for teacher in teachers:
            port = free_port()
            command = teacher.serve_command(port, threads)
            server = stack.enter_context(EngineServer(command, port, log_dir / f"{teacher.label.replace(':', '-')}.log"))
            header["servers"][teacher.label] = {"command": " ".join(command[2:]), "startup_s": round(server.startup_s, 1),
                                                "model": teacher.model.describe(content_hash=False)}
            count_tokens = teacher.token_counter()
            for prompt in prompts:
                label = teacher.label if len(prompts) == 1 else f"{teacher.label} {prompt.id}"
                contenders.append(Contender(label, server.base_url, teacher.model.name, prompt))
                counters[label] = count_tokens

        def save(partial: dict[str, Any], complete: bool = False) -> dict[str, Any]:
            whole = {**header, **partial, "complete": complete, "load_average_at_end": load_average()}
            write_result(result_path, "qa-teacher", whole)
            return whole

        result = compare_teachers(contenders, corpus_dir, work_dir, counters, on_round=save, **options)
    return save(result, complete=True)

