"""Build instruction datasets (chat `messages` JSONL) from the corpus splits.

Layout written under --out: `<task>/<split>.jsonl` for each task and split, and `manifest.json`
with the corpus hashes, templates, seed and counts. Deterministic given the seed. Train examples
never come from a paper that is (by id, title or abstract) also in validation or test.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

from econlm.data.corpus import load_corpus, split_files
from econlm.data.templates import TEMPLATES, classify_messages, qa_messages, title_messages
from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json, check_out_dir, sha256_file, write_jsonl
from econlm.types import SPLITS, TASKS, Example, Paper, QAPair

DATASET_MANIFEST = "manifest.json"


def _fingerprint(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def drop_leaks(corpus: dict[str, list[Paper]]) -> tuple[list[Paper], int]:
    """Train papers minus any whose id, title or abstract also occurs in validation or test."""
    held_out = [p for split in ("validation", "test") for p in corpus[split]]
    ids = {p.arxiv_id for p in held_out}
    texts = {_fingerprint(p.title) for p in held_out} | {_fingerprint(p.abstract) for p in held_out}
    kept = [
        p for p in corpus["train"]
        if p.arxiv_id not in ids and _fingerprint(p.title) not in texts and _fingerprint(p.abstract) not in texts
    ]
    return kept, len(corpus["train"]) - len(kept)


def paper_examples(task: str, papers: Iterable[Paper], split: str) -> list[Example]:
    to_messages = {"title": title_messages, "classify": classify_messages}[task]
    return [
        Example(
            id=f"{task}-{p.arxiv_id}",
            messages=to_messages(p),
            task=task,
            source_id=p.arxiv_id,
            split=split,
            template=TEMPLATES[task].id,
        )
        for p in papers
    ]


def qa_examples(pairs: Iterable[QAPair], papers: Iterable[Paper], split: str) -> list[Example]:
    """Q&A examples for the pairs whose source paper is in `papers` (the split's papers)."""
    ids = {p.arxiv_id for p in papers}
    counter: dict[str, int] = {}
    examples = []
    for pair in pairs:
        if pair.source_id not in ids:
            continue
        k = counter[pair.source_id] = counter.get(pair.source_id, 0) + 1
        examples.append(
            Example(
                id=f"qa-{pair.source_id}-{k}",
                messages=qa_messages(pair),
                task="qa",
                source_id=pair.source_id,
                split=split,
                template=TEMPLATES["qa"].id,
            )
        )
    return examples


def parse_tasks(tasks: str | Iterable[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise UserError(f"unknown task(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(TASKS)}")
    return names


def build_datasets(
    corpus_dir: str | Path,
    tasks: str | Iterable[str],
    out_dir: str | Path,
    seed: int = 0,
    qa_file: str | Path | None = None,
) -> dict:
    """Write every task x split JSONL plus a manifest; returns the manifest.

    Refused before any work: an `out_dir` econlm may not replace (`econlm.io.check_out_dir`), and
    a corpus that leaves the title and classify tasks no train example.
    """
    tasks = parse_tasks(tasks)
    if "qa" in tasks and qa_file is None:
        raise UserError("task 'qa' needs --qa-file FILE (question-answer pairs, see `econlm qa synthesize`)")
    check_out_dir(out_dir)
    corpus = load_corpus(corpus_dir)
    train, dropped = drop_leaks(corpus)
    if not train and {"title", "classify"} & set(tasks):
        raise UserError(f"{corpus_dir}: no train papers left: all {dropped} are also in validation or test")
    papers = {"train": train, "validation": corpus["validation"], "test": corpus["test"]}
    pairs = list(QAPair.read_jsonl(qa_file)) if qa_file else []

    counts: dict[str, dict[str, int]] = {}
    with atomic_dir(out_dir) as tmp:
        for task in tasks:
            counts[task] = {}
            for split in SPLITS:
                if task == "qa":
                    examples = qa_examples(pairs, papers[split], split)
                else:
                    examples = paper_examples(task, papers[split], split)
                if split == "train":  # a fixed, seeded order; evaluation splits keep corpus order
                    random.Random(f"{seed}-{task}").shuffle(examples)
                counts[task][split] = write_jsonl(tmp / task / f"{split}.jsonl", examples)
        files = split_files(corpus_dir)
        manifest = {
            "corpus": str(Path(corpus_dir).resolve()),
            "corpus_sha256": {split: sha256_file(path) for split, path in files.items()},
            "qa_file": str(qa_file) if qa_file else None,
            "qa_file_sha256": sha256_file(qa_file) if qa_file else None,
            "tasks": tasks,
            "templates": {task: TEMPLATES[task].id for task in tasks},
            "seed": seed,
            "counts": counts,
            "train_papers_dropped_as_leaks": dropped,
        }
        atomic_write_json(tmp / DATASET_MANIFEST, manifest)
    return manifest


def load_examples(dataset_dir: str | Path, task: str, split: str) -> list[Example]:
    path = Path(dataset_dir) / task / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: no such dataset file (run `econlm data build --tasks {task}` first)")
    return list(Example.read_jsonl(path))
