"""A Markdown datasheet for a synthesized Q&A file: where the pairs come from and what was dropped.

Counts come from the progress sidecar (every finished paper of every run); the teacher prompt,
filter definitions and decoding from the summary sidecar written by the last run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from econlm.errors import UserError
from econlm.io import atomic_write_text, sha256_file
from econlm.qa.synthesize import COUNT_KEYS, read_progress, sidecar_paths, tally
from econlm.types import QAPair


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return text.replace("|", "\\|")


def render_datasheet(qa_file: str | Path, notes: str = "", n_examples: int = 10, seed: int = 0) -> str:
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
        "The prompt (system message, worked examples as earlier chat turns, then the abstract):",
        "```text\n" + "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in run["prompt_messages"]) + "\n```",
    ]
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
                    seed: int = 0) -> Path:
    text = Path(notes).read_text(encoding="utf-8") if notes else ""
    atomic_write_text(out, render_datasheet(qa_file, text, n_examples, seed))
    return Path(out)
