"""Tokens llama.cpp evaluates for constrained scoring of few-shot classification prompts: the
backend, whose scoring context keeps what it evaluated, beside a fresh context per (paper, label),
in one invocation on the same prompts; the two paths' scores must agree.

    python scripts/bench_llamacpp_scoring.py [--model llamacpp:qwen2.5-coder-0.5b-instruct] \
        [--papers 8] [--reference-budget-s 480] [--out bench/results/llamacpp-scoring-TIMESTAMP.json]

The prompts are `econlm eval --task classify --prompting few-shot`'s (3 worked train examples, one
per category, seed 0) for a seeded draw of validation papers, scored with one thread. The backend
scores the papers in order, one call each on the same backend (as one call over all would), so
the tokens of its first k papers are what scoring those k costs; the fresh-context reference,
three times the prompt per paper, runs paper by paper until its time budget is spent, and the two
are compared on the papers it reached. Tokens evaluated are the load-independent cost; wall times
and the load average are recorded beside them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from econlm.backends import get_backend
from econlm.data.templates import CLASSIFY
from econlm.evaluate import ANSWERS, FEW_SHOTS, chat_prompts, few_shot_examples, load_split
from econlm.io import atomic_write_json
from econlm.paths import default_corpus
from econlm.provenance import machine, utc_now


def best(row: list[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llamacpp:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--corpus", type=Path, default=None, help="corpus directory (default: $ECONLM_DATA)")
    parser.add_argument("--papers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-budget-s", type=float, default=480.0,
                        help="no fresh-context paper is started after this many seconds of the reference")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    corpus = args.corpus or default_corpus()
    stamp = utc_now().replace(":", "").replace("-", "")[:15]
    out = args.out or Path("bench/results") / f"llamacpp-scoring-{stamp}Z.json"

    papers = load_split(corpus, "validation", limit=args.papers, seed=args.seed)
    examples = few_shot_examples(corpus, "classify", FEW_SHOTS["classify"], args.seed)
    # The prompts `econlm eval --prompting few-shot` builds, by the same function.
    conversations = chat_prompts(CLASSIFY, "classify", [p.abstract for p in papers], examples)
    load_at_start = os.getloadavg()

    backend = get_backend(args.model, n_threads=1)
    prompt_ids = [backend.tokenize(backend.chat_prompt(c)) for c in conversations]
    kept_scores, kept_tokens, kept_s = [], [], []
    for conversation in conversations:
        before, started = backend.scoring_evaluated_tokens, time.perf_counter()
        kept_scores.append(backend.score_options([conversation], ANSWERS)[0])
        kept_s.append(time.perf_counter() - started)
        kept_tokens.append(backend.scoring_evaluated_tokens - before)
    del backend

    fresh_scores, fresh_tokens, fresh_s = [], [], []
    reference_started = time.perf_counter()
    for conversation in conversations:
        if time.perf_counter() - reference_started > args.reference_budget_s:
            break
        scores, tokens, started = [], [], time.perf_counter()
        for answer in ANSWERS:
            fresh = get_backend(args.model, n_threads=1)
            scores.append(fresh.score_options([conversation], [answer])[0][0])
            tokens.append(fresh.scoring_evaluated_tokens)
            del fresh
        fresh_s.append(time.perf_counter() - started)
        fresh_scores.append(scores)
        fresh_tokens.append(tokens)

    k = len(fresh_tokens)
    fresh_total, kept_k = sum(map(sum, fresh_tokens)), sum(kept_tokens[:k])
    # A fresh context evaluates the prompt and the answer but its last token, so each prompt
    # evaluated once from an empty context for its three answers costs the prompt once plus the
    # answers (the code before prefix reuse evaluated one more token per answer).
    once_per_paper = sum(len(ids) + sum(t - len(ids) for t in row) for ids, row in zip(prompt_ids, fresh_tokens))
    result = {
        "date": utc_now(), "model": args.model, "split": "validation", "papers": len(conversations), "seed": args.seed,
        "shots": len(examples), "few_shot_examples": [p.arxiv_id for p in examples], "options": ANSWERS,
        "n_threads": 1, "omp_thread_limit": os.environ.get("OMP_THREAD_LIMIT"), "machine": machine(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "prompt_tokens": [len(ids) for ids in prompt_ids],
        "shared_prefix_tokens": len(os.path.commonprefix(prompt_ids)),
        "kept_context": {"tokens_per_paper": kept_tokens, "seconds_per_paper": [round(s, 2) for s in kept_s],
                         "tokens_all_papers": sum(kept_tokens)},
        "kept_scores": kept_scores,
        "reference_papers": k,
        "fresh_scores": fresh_scores,
        "fresh_context_per_label": {"tokens_per_paper": [sum(row) for row in fresh_tokens],
                                    "seconds_per_paper": [round(s, 2) for s in fresh_s]},
        "on_reference_papers": {
            "kept_tokens_per_paper": kept_k / k, "fresh_per_label_tokens_per_paper": fresh_total / k,
            "empty_context_per_paper_tokens_per_paper": once_per_paper / k,
            "ratio_fresh_per_label": fresh_total / kept_k, "ratio_empty_context_per_paper": once_per_paper / kept_k,
            "kept_seconds": round(sum(kept_s[:k]), 2), "fresh_seconds": round(sum(fresh_s), 2),
            "max_abs_logprob_difference": max(abs(a - b) for ra, rb in zip(kept_scores, fresh_scores) for a, b in zip(ra, rb)),
            "same_predictions": [best(r) for r in kept_scores[:k]] == [best(r) for r in fresh_scores],
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(out)
    for key, value in result.items():
        if key not in ("machine", "options"):
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
