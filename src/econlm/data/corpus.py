"""Load and validate corpus JSONL files (the schema of ../shared/data/README.md).

Every record is checked (required fields, category, non-empty title/abstract, id format,
duplicate ids); whitespace is normalised and TeX kept (see `econlm.types.Paper`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from econlm.errors import UserError
from econlm.io import utf8_lines
from econlm.types import SPLITS, Paper, _first_error


@dataclass
class LoadResult:
    papers: list[Paper]
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" for each skipped line


def load_papers(path: str | Path, skip_invalid: bool = False) -> LoadResult:
    """Read one corpus JSONL file. The first bad line (bad JSON, a record that fails validation, a
    line that is not UTF-8) raises a UserError naming file and line, unless `skip_invalid`, in
    which case bad lines are counted in `skipped`. A file without records is refused: an empty
    split would make an empty dataset or evaluation without a word."""
    path = Path(path)
    papers: list[Paper] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    records = 0
    for lineno, line, problem in utf8_lines(path):
        if line is not None and not line.strip():
            continue
        records += 1
        if problem is None:
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError
                paper = Paper.model_validate(obj)
                if paper.arxiv_id in seen:
                    problem = f"duplicate arxiv_id {paper.arxiv_id!r} (first on line {seen[paper.arxiv_id]})"
            except ValueError as exc:  # JSONDecodeError and ValidationError are ValueErrors
                if isinstance(exc, ValidationError):
                    problem = _first_error(exc)
                elif isinstance(exc, json.JSONDecodeError):
                    problem = f"invalid JSON ({exc.msg})"
                else:
                    problem = "expected a JSON object"
        if problem:
            message = f"{path}:{lineno}: {problem}"
            if not skip_invalid:
                raise UserError(message)
            skipped.append(message)
            continue
        seen[paper.arxiv_id] = lineno
        papers.append(paper)
    if not records:
        raise UserError(f"{path}: is empty (no records); a corpus file holds one JSON paper per line")
    return LoadResult(papers, skipped)


def split_files(corpus_dir: str | Path) -> dict[str, Path]:
    """The split files of a corpus directory; train/validation/test.jsonl must all exist."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"{corpus_dir}: corpus directory not found (pass --corpus DIR or set ECONLM_DATA)")
    files = {split: corpus_dir / f"{split}.jsonl" for split in SPLITS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"{corpus_dir}: missing split file(s): {', '.join(missing)}")
    return files


def load_corpus(corpus_dir: str | Path, skip_invalid: bool = False) -> dict[str, list[Paper]]:
    """All three splits, validated; a paper id appearing in two splits is an error."""
    corpus = {split: load_papers(path, skip_invalid).papers for split, path in split_files(corpus_dir).items()}
    owner: dict[str, str] = {}
    for split, papers in corpus.items():
        for p in papers:
            if p.arxiv_id in owner:
                raise UserError(f"{corpus_dir}: paper {p.arxiv_id} is in both {owner[p.arxiv_id]} and {split}")
            owner[p.arxiv_id] = split
    return corpus
