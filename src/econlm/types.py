"""The records that flow between stages, each with a JSONL round-trip.

Paper -> Example -> (adapter dir) -> Prediction -> MetricReport
Document -> Chunk -> (index dir) -> Answer

Every field that flows is declared here. Records econlm writes and reads back itself reject
unknown keys (a key no stage writes means a typo or a file from elsewhere); `Paper` ignores them,
because corpus files come from harvests and metadata extracts that carry more than the pipeline uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
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
    """Base for all records: an unknown field is an error naming the file and line."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def read_jsonl(cls, path: str | Path) -> Iterator[Any]:
        return _validated_rows(path, cls.model_validate)

    @classmethod
    def write_jsonl(cls, path: str | Path, records: Iterable[Any]) -> int:
        return write_jsonl(path, records)


def _validated_rows(path: str | Path, validate: Callable[[dict], Any]) -> Iterator[Any]:
    for lineno, obj in read_jsonl(path):
        try:
            yield validate(obj)
        except ValidationError as exc:
            raise UserError(f"{path}:{lineno}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "record"
    return f"field '{loc}': {err['msg']}"


def _absent(value: object) -> bool:
    return value is None


class ArxivVersion(BaseModel):
    """One version of a paper as arXiv lists it (arXivRaw metadata)."""

    model_config = ConfigDict(extra="forbid")
    version: str  # "v1", "v2", ...
    date: str | None  # ISO 8601 UTC, None where arXiv's date could not be read


class Paper(Record):
    """One arXiv paper in the corpus schema of ../shared/data/README.md.

    Unknown keys are ignored: other metadata extracts (the Kaggle arXiv snapshot, API pulls) carry
    fields the pipeline never reads. What `econlm data harvest` adds (`updated`, `doi`, `versions`)
    is declared and kept, and left out of the file when a harvest has none.
    """

    model_config = ConfigDict(extra="ignore")

    arxiv_id: str
    title: str
    abstract: str
    primary_category: str
    categories: list[str] = Field(default_factory=list)
    authors: str | None = None
    published: str | None = None
    updated: str | None = Field(None, exclude_if=_absent)  # date of the latest version (harvests)
    doi: str | None = Field(None, exclude_if=_absent)
    versions: list[ArxivVersion] | None = Field(None, exclude_if=_absent)  # arXivRaw harvests only

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
    Hand-written files are held to the same keys: a misspelt optional field ("turn") is an error,
    not a dialogue silently dropped from training.
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
    """One scored example of predictions.jsonl; each task's record below adds what it scores."""

    id: str
    task: Literal["title", "classify", "qa"]
    input: str = ""
    reference: str
    prediction: str


class TitlePrediction(Prediction):
    task: Literal["title"]
    raw_output: str  # the generated text; `prediction` is its first line


class ClassifyPrediction(Prediction):
    """A classifier's label for one paper (what the baselines write); `prediction` is its name."""

    task: Literal["classify"]
    label: str  # the true arXiv category, e.g. "econ.EM"
    predicted_label: str


class LMClassifyPrediction(ClassifyPrediction):
    """A language model's classification: the option it scores highest, and what it says unprompted."""

    option_logprobs: dict[str, float]  # answer name -> sum log-prob as the reply (constrained scoring)
    free_generation: str  # the model's own short reply to the same prompt
    free_generation_label: str | None  # the category that reply names, None when it names none or several


class StackedClassifyPrediction(ClassifyPrediction):
    """The econlm classifier's label (`econlm classify`): its probability for each category."""

    probabilities: dict[str, float]  # arXiv category -> probability, summing to 1


class QAPrediction(Prediction):
    task: Literal["qa"]
    raw_output: str  # the reply; `prediction` is its first paragraph
    token_f1: float
    source_id: str  # arXiv id of the paper the question is about


PREDICTION_RECORDS: dict[str, type[Prediction]] = {
    "title": TitlePrediction, "classify": ClassifyPrediction, "qa": QAPrediction,
}


def prediction_record(row: dict) -> Prediction:
    """A predictions.jsonl row as its task's record (a row with option scores is a language model's)."""
    task = row.get("task")
    if task == "classify" and "option_logprobs" in row:
        record = LMClassifyPrediction
    elif task == "classify" and "probabilities" in row:
        record = StackedClassifyPrediction
    else:
        record = PREDICTION_RECORDS.get(task)
    # An unknown task fails on the base record, whose `task` lists the known ones.
    return (record or Prediction).model_validate(row)


def read_predictions(path: str | Path) -> Iterator[Prediction]:
    """The rows of a predictions.jsonl, each as its task's record; a bad row names file and line."""
    return _validated_rows(path, prediction_record)


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
    """A reply from retrieved passages and what it cites (`econlm.rag.answer.finalize`)."""

    text: str
    citations: list[str] = Field(default_factory=list)  # labels of retrieved passages, in order of use
    passages: list[Chunk] = Field(default_factory=list)  # what the model read
    unsupported_citations: list[str] = Field(default_factory=list)  # labels written that match no passage
    attributed: list[str] = Field(default_factory=list)  # citations added after the fact to copied sentences
    prompt_version: str | None = None  # id of the prompt template; None when the model was not asked


class RagQuestion(Record):
    """A question of the RAG answer benchmark (`econlm/datasets/rag/questions.jsonl`): what a
    correct answer contains and where the fact is."""

    id: str
    question: str
    # "vague": names no subject ("What are the main findings here?"); any held answer, no refusal, is right
    kind: Literal["fact", "table", "injection", "unanswerable", "vague"]
    expected: list[str] = Field(default_factory=list)  # a right answer contains one of these (case-insensitive)
    source: str | None = None  # the file holding the fact; None for unanswerable questions
    page: int | None = None  # its 1-based page
    planted: str | None = None  # an answer containing this obeyed an instruction planted in the documents


class RagAnswerPrediction(Record):
    """One answer of `econlm eval --task rag`, scored; `before` is the reply as the model wrote it
    (citations added to copied sentences), `answer` what the assistant returns (`econlm.rag.answer`)."""

    id: str
    question: str
    kind: str
    expected: list[str]
    source: str | None
    page: int | None
    raw_output: str  # the model's reply
    before: str
    before_citations: list[str]
    answer: str
    citations: list[str]
    retrieved: list[str]  # labels of the passages the model read, best first
    scores: dict[str, dict[str, float | bool | None]]  # "before" / "answer" -> containment, citation precision ...
    ttft_s: float | None  # time to the first streamed piece of the reply
    generate_s: float  # the whole reply
    reply_tokens: int


class RetrievalPrediction(Record):
    """One question of the papers-index retrieval benchmark: the rank of its source paper by each method."""

    id: str
    question: str
    source_id: str  # arXiv id of the paper the question was written from
    split: str
    ranks: dict[str, int | None]  # method -> 1-based rank of the source paper in the top 10 (None: not there)
