"""The records that flow between stages, each with a JSONL round-trip.

Paper -> Example -> (adapter dir) -> Prediction -> MetricReport
Document -> Chunk -> (index dir) -> Answer
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from econlm.errors import UserError
from econlm.io import read_jsonl, write_jsonl

# The study's three primary categories, with the human-readable names used in prompts.
CATEGORIES: dict[str, str] = {
    "econ.EM": "Econometrics",
    "econ.GN": "General Economics",
    "econ.TH": "Theoretical Economics",
}
SPLITS = ("train", "validation", "test")
TASKS = ("title", "classify", "qa")

# New-style ids (YYMM.NNNN[N]) and old-style ids (archive[.SUB]/YYMMNNN), no version suffix.
ARXIV_ID_RE = re.compile(r"^(\d{4}\.\d{4,5}|[a-z][a-z\-]*(\.[A-Z]{2})?/\d{7})$")
_WS_RE = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    """Collapse runs of whitespace and line breaks to one space; TeX is left untouched."""
    return _WS_RE.sub(" ", text).strip()


class Record(BaseModel):
    """Base for all records: unknown fields are kept (extra fields are allowed on disk)."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def read_jsonl(cls, path: str | Path) -> Iterator[Any]:
        for lineno, obj in read_jsonl(path):
            try:
                yield cls.model_validate(obj)
            except ValidationError as exc:
                raise UserError(f"{path}:{lineno}: {_first_error(exc)}") from None

    @classmethod
    def write_jsonl(cls, path: str | Path, records: Iterable[Any]) -> int:
        return write_jsonl(path, records)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "record"
    return f"field '{loc}': {err['msg']}"


class Paper(Record):
    """One arXiv paper in the corpus schema of ../shared/data/README.md."""

    arxiv_id: str
    title: str
    abstract: str
    primary_category: str
    categories: list[str] = Field(default_factory=list)
    authors: str | None = None
    published: str | None = None

    @field_validator("arxiv_id")
    @classmethod
    def _id_format(cls, v: str) -> str:
        v = v.strip()
        if not ARXIV_ID_RE.match(v):
            raise ValueError(f"not an arXiv id without version suffix: {v!r}")
        return v

    @field_validator("title", "abstract")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        v = normalize_ws(v)
        if not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("primary_category")
    @classmethod
    def _known_category(cls, v: str) -> str:
        if v not in CATEGORIES:
            raise ValueError(f"unknown category {v!r} (expected one of {', '.join(CATEGORIES)})")
        return v

    @field_validator("categories", mode="before")
    @classmethod
    def _categories(cls, v: object) -> object:
        # Real harvests have papers with no category list; the primary one is filled in below.
        return [] if v is None else v

    @model_validator(mode="after")
    def _primary_first(self) -> "Paper":
        if not self.categories:
            self.categories = [self.primary_category]
        elif self.categories[0] != self.primary_category:
            raise ValueError(f"categories must list the primary category {self.primary_category} first")
        return self

    @field_validator("published")
    @classmethod
    def _date(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^\d{4}-\d{2}-\d{2}$", v):
            raise ValueError(f"expected YYYY-MM-DD, got {v!r}")
        return v

    @property
    def year(self) -> int | None:
        return int(self.published[:4]) if self.published else None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Example(Record):
    """One instruction example in the chat `messages` format read by TRL, axolotl, LLaMA-Factory."""

    id: str
    messages: list[Message]
    task: Literal["title", "classify", "qa"]
    source_id: str
    split: Literal["train", "validation", "test"]
    template: str  # "name@version" of the prompt template that produced it

    @property
    def reference(self) -> str:
        """The assistant's final answer (what a model is scored against)."""
        return self.messages[-1].content


class QAPair(Record):
    """Input format of the `qa` task: one question-answer pair grounded in one paper's abstract.

    Written by `econlm qa synthesize` (one JSON object per line); `turns` optionally holds a short
    multi-turn dialogue as alternating user/assistant messages that continue the first pair.
    """

    source_id: str
    question: str
    answer: str
    split: Literal["train", "validation", "test"] | None = None
    teacher: str | None = None
    prompt_version: str | None = None
    support: float | None = None
    turns: list[Message] = Field(default_factory=list)

    @field_validator("question", "answer")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        v = normalize_ws(v)
        if not v:
            raise ValueError("must not be empty")
        return v


class Prediction(Record):
    id: str
    task: str
    input: str = ""
    reference: str
    prediction: str


class MetricReport(Record):
    """Metrics of one evaluation plus the one that ranks models, and where the numbers come from."""

    task: str
    metrics: dict[str, Any]
    primary_metric: str
    provenance: dict[str, Any] = Field(default_factory=dict)


class Document(Record):
    """A user document (or corpus paper) before splitting; `pages` keeps page numbers (1-based)."""

    source: str
    pages: list[str]
    metadata: dict[str, Any] = Field(default_factory=dict)


class Chunk(Record):
    text: str
    source: str
    page: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Answer(Record):
    text: str
    citations: list[str] = Field(default_factory=list)
    passages: list[Chunk] = Field(default_factory=list)
