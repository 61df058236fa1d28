"""`econlm qa ...`: synthesize economics Q&A pairs with a teacher LLM, describe them, evaluate on them;
`econlm bench qa-teacher`: teachers compared on the same abstracts."""

from __future__ import annotations

from pathlib import Path

import click

from econlm.cli._base import ModelSpecParam, bench, corpus_option, main, resolve_corpus
from econlm.data.templates import SYNTHESIS_DIALOGUE, SYNTHESIS_PAIRS


@main.group()
def qa() -> None:
    """Economics Q&A: synthesize pairs from abstracts with a teacher LLM, write a datasheet, evaluate."""


@qa.command()
@corpus_option
@click.option("--split", required=True, help="Corpus split whose abstracts to use: train, validation or test.")
@click.option("--teacher", "--model", "spec", type=ModelSpecParam(), default=None,
              help="The teacher, ENGINE:MODEL: openai:NAME (OpenAI-compatible endpoint at $OPENAI_BASE_URL, key "
                   "$OPENAI_API_KEY: OpenAI, vLLM, llama.cpp server, Ollama), transformers:MODEL (in-process; a bare "
                   "MODEL works) or llamacpp:FILE.gguf.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Q&A JSONL to append to (one QAPair per line); sidecars <stem>.progress.jsonl and <stem>.summary.json.")
@click.option("--limit", type=int, default=None, help="Only the first N papers of a seeded shuffle of the split.")
@click.option("--seed", default=0, show_default=True, help="Seed of the paper order (the --limit subset) and of sampling.")
@click.option("--concurrency", default=4, show_default=True,
              help="Requests in flight (openai:) or prompts per batch (transformers:). Raise it for a vLLM deployment.")
@click.option("--pairs", "n_pairs", default=3, show_default=True, help="Pairs asked per abstract (1-4).")
@click.option("--dialogue", is_flag=True, help="Also ask for one follow-up exchange per pair (multi-turn examples).")
@click.option("--prompt", "prompt_id", default=None, metavar="ID",
              help="The teacher's prompt template, NAME@VERSION (econ-qa-synth@2, econ-qa-synth-dialogue@2, or "
                   f"their @1); recorded with every pair.  [default: {SYNTHESIS_PAIRS.id}, or {SYNTHESIS_DIALOGUE.id} with --dialogue]")
@click.option("--max-new-tokens", default=256, show_default=True, help="Teacher reply length limit.")
@click.option("--temperature", default=0.3, show_default=True, help="Teacher sampling temperature (0 = greedy).")
@click.option("--top-p", default=0.9, show_default=True, help="Teacher nucleus sampling.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per request (openai:).")
@click.option("--retries", default=3, show_default=True, help="Retries per request on 429/5xx/timeouts (openai:).")
@click.option("--min-answer-support", default=0.6, show_default=True,
              help="Drop answers whose content words are found in the abstract less often than this.")
@click.option("--min-question-support", default=0.5, show_default=True,
              help="Drop questions whose content words are found in the abstract less often than this.")
def synthesize(corpus, split, spec, out, limit, seed, concurrency, n_pairs, dialogue, prompt_id, max_new_tokens,
               temperature, top_p, timeout, retries, min_answer_support, min_question_support) -> None:
    """Write 2-4 question-answer pairs per abstract with a teacher LLM, filtered and resumable.

    Reads CORPUS/<split>.jsonl (train papers that leak into validation/test are skipped); appends
    kept pairs to OUT, one line per finished paper to <stem>.progress.jsonl, and writes counts of
    every filter to <stem>.summary.json. Rerunning the same command resumes where it stopped.
    """
    from econlm.backends import Decoding
    from econlm.qa.synthesize import Filters, synthesize_prompt
    from econlm.qa.synthesize import synthesize as run_synthesis

    if spec is None:
        raise click.UsageError("give the teacher: --teacher openai:NAME, transformers:MODEL or llamacpp:FILE.gguf")
    prompt = synthesize_prompt(prompt_id, dialogue)
    filters = Filters(min_answer_support=min_answer_support, min_question_support=min_question_support)
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    summary = run_synthesis(
        resolve_corpus(corpus), split, spec, out, limit=limit, seed=seed, concurrency=concurrency,
        n_pairs=n_pairs, prompt=prompt, decoding=decoding, filters=filters, timeout=timeout, max_retries=retries,
    )
    run, totals = summary["last_run"], summary["totals"]
    click.echo(f"this run: {run['finished']} papers finished, {run['failed']} failed (rerun to retry), "
               f"{run['already_done']} already done")
    click.echo("all runs: " + "  ".join(f"{k}={v}" for k, v in totals.items()))
    for error in run["errors"][:3]:
        click.echo(f"  error: {error}", err=True)
    click.echo(f"wrote {out} and its summary {out.name.removesuffix('.jsonl')}.summary.json")


@qa.command()
@click.argument("qa_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--notes", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Markdown included verbatim (e.g. why this teacher).")
@click.option("--teacher-choice", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="An `econlm bench qa-teacher` result: its table and ratios become the 'Teacher choice' section.")
@click.option("--examples", default=10, show_default=True, help="Random pairs shown.")
@click.option("--seed", default=0, show_default=True, help="Seed of the example choice.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Datasheet Markdown file.")
def datasheet(qa_file, notes, teacher_choice, examples, seed, out) -> None:
    """A Markdown datasheet for a synthesized Q&A file.

    Reads QA_FILE and its <stem>.summary.json / <stem>.progress.jsonl; writes OUT with the teacher,
    prompt, the teacher comparison (--teacher-choice), filter definitions and counts, pairs per
    split and random examples.
    """
    from econlm.qa.datasheet import write_datasheet

    write_datasheet(qa_file, out, notes=notes, n_examples=examples, seed=seed, teacher_choice=teacher_choice)
    click.echo(f"wrote {out}")


@qa.command("eval")
@corpus_option
@click.option("--model", "spec", type=ModelSpecParam(("transformers",)), default="econlm", show_default=True,
              help="transformers:MODEL (a bare MODEL works): 'econlm' (shipped adapter), an adapter or run dir, a "
                   "packaged name, a HF folder, a .gguf or a hub id.")
@click.option("--qa-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Q&A JSONL with reference answers [default: the shipped econ-qa.jsonl, data/qa/ in a checkout].")
@click.option("--split", default="test", show_default=True, help="Score the pairs of this split's papers.")
@click.option("--limit", type=int, default=None, help="Score a seeded random subset of N pairs.")
@click.option("--mmlu-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MMLU CSVs <subject>_{dev,val}.csv [default: mmlu-econ/ beside the corpus directory].")
@click.option("--no-mmlu", is_flag=True, help="Skip the MMLU-econ multiple-choice check.")
@click.option("--shots", default=5, show_default=True, help="MMLU worked examples from each subject's dev file.")
@click.option("--batch-size", default=16, show_default=True, help="Examples per forward pass.")
@click.option("--dtype", default="float32", show_default=True, help="float32 or bfloat16.")
@click.option("--max-new-tokens", default=96, show_default=True, help="Answer length limit.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --limit subset.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
def eval_qa(corpus, spec, qa_file, split, limit, mmlu_dir, no_mmlu, shots, batch_size, dtype, max_new_tokens, seed,
            out) -> None:
    """Evaluate a model on economics Q&A and MMLU-econ (also `econlm eval --task qa`).

    Reads the Q&A file (pairs of CORPUS/<split>.jsonl papers only), the MMLU CSVs and the model;
    writes OUT/predictions.jsonl, OUT/mmlu_predictions.jsonl, OUT/mmlu.png and OUT/metrics.json:
    token F1, exact match, ROUGE-L F (rouge-score, stemmer) and MiniLM cosine (mean cosine of the
    packaged sentence encoder's embeddings; not BERTScore) of closed-book answers against the
    references, and MMLU 5-shot accuracy by log-likelihood of the letters and of the option texts.
    """
    from econlm.backends import Decoding
    from econlm.evaluate import load_backend
    from econlm.io import check_out_dir
    from econlm.qa.eval import DEFAULT_QA_FILE, evaluate_qa

    check_out_dir(out)  # before the model loads: a refused --out would waste the whole run
    report = evaluate_qa(load_backend(spec, batch_size=batch_size, dtype=dtype), out, resolve_corpus(corpus),
                         qa_file or DEFAULT_QA_FILE, split=split, limit=limit, mmlu_dir="" if no_mmlu else mmlu_dir,
                         shots=shots, decoding=Decoding(max_new_tokens=max_new_tokens), seed=seed)
    echo_qa_report(report, out)


def echo_qa_report(report, out: Path) -> None:
    """The headline numbers of a Q&A report (shared with `econlm eval --task qa`)."""
    metrics = report.metrics
    cosine = metrics.get("minilm_cosine")
    click.echo(f"qa (n={metrics['n']}): token_f1={metrics['token_f1']:.4f}  rougeL_f={metrics['rougeL_f']:.4f}  "
               f"exact_match={metrics['exact_match']:.4f}  "
               + (f"minilm_cosine={cosine:.4f}" if cosine is not None else f"minilm_cosine: {report.provenance['minilm_cosine']}"))
    if "mmlu_accuracy" in metrics:
        low, high = metrics["mmlu_accuracy_ci95"]
        click.echo(f"mmlu-econ (n={metrics['mmlu_n']}, {metrics['mmlu']['shots']}-shot): "
                   f"accuracy={metrics['mmlu_accuracy']:.4f} [{low:.2f}, {high:.2f}]  "
                   f"option-text accuracy={metrics['mmlu_accuracy_option_text']:.4f}")
    click.echo(f"wrote {out}/metrics.json and predictions ({report.provenance['seconds']:.0f}s)")


# Here rather than from econlm.bench.qa_teacher, so that --help stays instant.
DEFAULT_TEACHERS = ("llamacpp:qwen2.5-coder-0.5b-instruct", "llamacpp:qwen2.5-coder-1.5b-instruct")


@bench.command("qa-teacher")
@corpus_option
@click.option("--teacher", "teachers", multiple=True, default=DEFAULT_TEACHERS, show_default=True,
              help="ENGINE:MODEL served by `econlm serve --engine ENGINE --model MODEL` (llamacpp, vllm or "
                   "transformers); repeat for each contender. Ratios are against the first.")
@click.option("--split", default="validation", show_default=True, help="Corpus split whose abstracts every teacher gets.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="Papers per teacher (a seeded shuffle).")
@click.option("--round", "round_size", default=10, show_default=True, type=click.IntRange(1),
              help="Papers per teacher per round; the teachers take turns round by round.")
@click.option("--seed", default=0, show_default=True, help="Seed of the paper order and of sampling.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1),
              help="Requests in flight per teacher (econlm's own servers answer one at a time; raise it for vllm).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads each teacher's server computes on (`econlm serve --threads`); default: each engine's own.")
@click.option("--pairs", "n_pairs", default=3, show_default=True, help="Pairs asked per abstract (1-4).")
@click.option("--prompt", "prompt_ids", multiple=True, default=(SYNTHESIS_PAIRS.id,), show_default=True, metavar="ID",
              help="Synthesis prompt template (as `qa synthesize --prompt`); repeat to try every teacher with each.")
@click.option("--max-new-tokens", default=256, show_default=True, help="Teacher reply length limit.")
@click.option("--temperature", default=0.3, show_default=True, help="Teacher sampling temperature.")
@click.option("--top-p", default=0.9, show_default=True, help="Teacher nucleus sampling.")
@click.option("--out", default=Path("bench/results"), show_default=True, type=click.Path(path_type=Path),
              help="Result .json file or directory; the teachers' pairs and server logs go in a folder beside it.")
def qa_teacher(corpus, teachers, split, limit, round_size, seed, concurrency, threads, n_pairs, prompt_ids,
               max_new_tokens, temperature, top_p, out) -> None:
    """Q&A teachers (and prompts) side by side: the same abstracts, decoding and filters for each.

    Serves every teacher on 127.0.0.1, runs `econlm qa synthesize` against it with each --prompt in
    alternating rounds, and writes a JSON result (kept-pair rate overall and per filter, papers/s,
    generated tokens/s, load average during each contender's rounds, ratios against the first)
    after every round; prints a table.
    """
    from datetime import datetime, timezone

    from econlm.backends import Decoding
    from econlm.bench.qa_teacher import Teacher, run_qa_teacher_bench
    from econlm.qa.datasheet import teacher_table
    from econlm.qa.synthesize import synthesize_prompt

    contenders = [Teacher.parse(t) for t in teachers]
    prompts = tuple(synthesize_prompt(p) for p in prompt_ids)
    if out.suffix != ".json":
        out = out / f"qa-teacher-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    decoding = Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    result = run_qa_teacher_bench(contenders, resolve_corpus(corpus), out, threads=threads, prompts=prompts,
                                  split=split, limit=limit, round_size=round_size, seed=seed, concurrency=concurrency,
                                  n_pairs=n_pairs, decoding=decoding)
    click.echo(teacher_table(result))
    click.echo(f"load average {result['load_average_at_start']} at start, {result['load_average_at_end']} at end "
               f"({result['cpu_count']} CPUs)")
    click.echo(f"wrote {out} (+ the pairs in {out.with_suffix('')}/)")
