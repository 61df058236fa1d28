"""A Markdown datasheet for a synthesized Q&A file: where the pairs come from and what was dropped.

Counts come from the progress sidecar (every finished paper of every run); the teacher prompt,
filter definitions and decoding from the summary sidecar written by the last run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from econlm.data import templates
from econlm.errors import UserError
from econlm.io import atomic_write_text, sha256_file
from econlm.qa.synthesize import COUNT_KEYS, FILTER_NAMES, read_progress, sidecar_paths, tally, teacher_conversation
from econlm.types import QAPair


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text.replace("|", "\\|")


def teacher_table(result: dict[str, Any]) -> str:
    """An `econlm bench qa-teacher` result as a table: kept-pair rate, each filter's share of the
    candidate pairs (filters no teacher tripped left out), throughput and load."""
    rows = result["teachers"]
    # A result made before a filter existed has no count for it.
    filters = [name for name in FILTER_NAMES if any(row["counts"].get(name, 0) for row in rows.values())]
    header = ["teacher", "papers", "candidates", "kept", "kept / candidate", "kept / paper", "unparsable",
              *(name.replace("_", " ") for name in filters), "papers/s", "generated tokens/s", "load (1 min, mean)"]
    lines = [[f"`{label}`", str(row["papers"]), str(row["counts"]["candidates"]), str(row["counts"]["kept"]),
              f"{row['kept_per_candidate']:.2f}", f"{row['kept_per_paper']:.2f}", str(row["counts"]["unparsable"]),
              *(f"{row['counts'][name]} ({row['share_of_candidates'][name]:.0%})" for name in filters),
              f"{row['papers_per_s']:.4f}", f"{row['tokens_per_s']:.2f}", str(row["load_average_1m"].get("mean", "—"))]
             for label, row in rows.items()]
    return _table(lines, header)


def teacher_choice_section(path: Path) -> list[str]:
    """The teachers compared on the same abstracts (an `econlm bench qa-teacher` result file), with the ratios."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, dict) or result.get("benchmark") != "qa-teacher" or not result.get("teachers"):
        raise UserError(f"{path}: not an `econlm bench qa-teacher` result with at least one teacher")
    first = next(iter(result["teachers"]))
    ratio_lines = [
        f"`{label}` against `{first}`: papers/s x{r['papers_per_s']}, generated tokens/s x{r['tokens_per_s']}, "
        f"kept pairs per candidate x{r['kept_per_candidate']}, per paper x{r['kept_per_paper']}."
        for label, r in result["ratios_vs_first"].items() if label != first
    ]
    decoding = ", ".join(f"{k}={v}" for k, v in result["decoding"].items())
    # Results made before prompts could be compared have no prompt in their rows: one prompt for all.
    prompts = {row.get("prompt") for row in result["teachers"].values()}
    prompt = "the same prompt" if len(prompts) == 1 else "each teacher with each prompt (named in the first column)"
    return [
        f"`econlm bench qa-teacher` ({path.name}, {result.get('date', '')}): the same {result['limit']} {result['split']} "
        f"abstracts (seed {result['seed']}) for each teacher, {result['pairs_asked']} pairs asked, {prompt}, "
        f"decoding ({decoding}) and filters; the teachers took turns in rounds of {result['round_size']} papers, "
        f"{result['concurrency']} request(s) in flight. Filter columns: candidates dropped (share of candidates). "
        f"Throughput is over the seconds each teacher's rounds took, on {result['cpu_count']} CPUs "
        f"(load average {result['load_average_at_start']} at start, {result['load_average_at_end']} at "
        "end; the last column is the mean while that teacher ran): on a shared machine read the ratios, not the "
        "absolute speeds." + ("" if result.get("complete") else " The run was stopped before its last round."),
        teacher_table(result),
        *ratio_lines,
    ]


def _prompt_texts(prompt_ids: dict[str, int], run: dict[str, Any]) -> list[str]:
    """Each prompt the file's papers were asked with (system message, worked examples as earlier
    chat turns, then the abstract): the last run's as it recorded it, earlier ones from the registry."""
    parts = []
    for prompt_id in prompt_ids:
        if prompt_id == run["prompt"]:
            messages = run["prompt_messages"]
        else:
            messages = teacher_conversation(templates.get(prompt_id), "{abstract}", run["pairs_asked"])
        parts += [f"The prompt `{prompt_id}` (system message, worked examples as earlier chat turns, then the abstract):",
                  "```text\n" + "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages) + "\n```"]
    return parts


def render_datasheet(qa_file: str | Path, notes: str = "", n_examples: int = 10, seed: int = 0,
                     teacher_choice: str | Path | None = None) -> str:
    """The datasheet's Markdown; `teacher_choice` is an `econlm bench qa-teacher` result file."""
    qa_file = Path(qa_file)
    progress_path, summary_path = sidecar_paths(qa_file)
    if not summary_path.is_file():
        raise UserError(f"{summary_path}: no summary next to {qa_file} (written by `econlm qa synthesize`)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    counts = tally(read_progress(progress_path))
    pairs = list(QAPair.read_jsonl(qa_file))
    splits = list(counts["per_split"])
    run = summary["last_run"]

    parts = [
        f"# Datasheet: {qa_file.name}",
        "Synthetic economics question-answer pairs, written by a teacher LLM from arXiv economics "
        "abstracts (CC0 metadata) with `econlm qa synthesize`, for the `qa` task (`econlm data build "
        f"--tasks qa --qa-file {qa_file.name}`). Pairs of test papers are for evaluation only "
        "(`econlm eval --task qa`); `data build` routes every pair to the split of its source paper.",
        _table(
            [[qa_file.name, str(len(pairs)), f"`{sha256_file(qa_file)}`"]],
            ["file", "pairs", "sha256"],
        ),
        "## Teacher and prompt",
        _table([[f"`{t}`", str(n)] for t, n in counts["teachers"].items()], ["teacher", "papers"]),
        _table([[f"`{p}`", str(n)] for p, n in counts["prompts"].items()], ["prompt", "papers"]),
        "Decoding of the last run: " + ", ".join(f"{k}={v}" for k, v in run["decoding"].items()) + ".",
        *_prompt_texts(counts["prompts"], run),
    ]
    if teacher_choice is not None:
        parts += ["## Teacher choice", *teacher_choice_section(Path(teacher_choice))]
    if notes.strip():
        parts += ["## Notes", notes.strip()]
    per_split_rows = [
        [key] + [str(counts["per_split"][s][key]) for s in splits] + [str(counts["totals"][key])] for key in COUNT_KEYS
    ]
    definitions = summary["filter_definitions"]
    parts += [
        "## Filters",
        "Each candidate pair is counted under the first filter it fails, in this order. Thresholds: "
        + ", ".join(f"{k}={v}" for k, v in summary["filters"].items()) + ".",
        _table([[f"`{k}`", _quote(v)] for k, v in definitions.items()], ["filter", "definition"]),
        "## Counts",
        "Papers and candidate pairs through the filters (all runs); `kept` pairs are in the file.",
        _table(per_split_rows, ["count", *splits, "total"]),
    ]
    if pairs:
        supports = sorted(p.support for p in pairs if p.support is not None)
        per_paper: dict[str, int] = {}
        for pair in pairs:
            per_paper[pair.source_id] = per_paper.get(pair.source_id, 0) + 1
        parts.append(
            f"Answer support of kept pairs: median {supports[len(supports) // 2]:.2f}, minimum {supports[0]:.2f}. "
            f"Pairs per paper with any: mean {len(pairs) / len(per_paper):.2f}. "
            f"Pairs with follow-up turns: {sum(bool(p.turns) for p in pairs)}."
        )
        chosen = sorted(random.Random(seed).sample(range(len(pairs)), min(n_examples, len(pairs))))
        parts += [
            f"## {len(chosen)} random pairs (seed {seed})",
            _table(
                [[pairs[i].source_id, pairs[i].split or "", _quote(pairs[i].question), _quote(pairs[i].answer),
                  f"{pairs[i].support:.2f}" if pairs[i].support is not None else ""] for i in chosen],
                ["paper", "split", "question", "answer", "support"],
            ),
        ]
    return "\n\n".join(parts) + "\n"


def write_datasheet(qa_file: str | Path, out: str | Path, notes: str | Path | None = None, n_examples: int = 10,
                    seed: int = 0, teacher_choice: str | Path | None = None) -> Path:
    text = Path(notes).read_text(encoding="utf-8") if notes else ""
    atomic_write_text(out, render_datasheet(qa_file, text, n_examples, seed, teacher_choice))
    return Path(out)
