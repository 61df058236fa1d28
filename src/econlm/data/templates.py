"""Named, versioned prompt templates for the three tasks.

The template id (`name@version`) is stored in every example and next to every checkpoint: a
template mismatch between training and inference is the most reported fine-tuning bug. Change a
template's wording -> bump its version.

The classification answer is the category's name alone ("Econometrics", "General Economics",
"Theoretical Economics"): the three answers start with different tokens, so constrained scoring
needs only the log-likelihood of three short strings (or even one forward pass for the first
token) and never parses free text.
"""

from __future__ import annotations

from dataclasses import dataclass

from econlm.errors import UserError
from econlm.types import CATEGORIES, Message, Paper, QAPair

LABEL_TO_ANSWER = dict(CATEGORIES)
ANSWER_TO_LABEL = {v: k for k, v in CATEGORIES.items()}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    task: str
    system: str
    user: str  # str.format template over the example's fields (e.g. {abstract}, {question})

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def prompt(self, **fields: str) -> list[Message]:
        """System + user messages: what a model sees at inference time."""
        return [
            Message(role="system", content=self.system),
            Message(role="user", content=self.user.format(**fields)),
        ]


TITLE = PromptTemplate(
    name="econ-title",
    version="1",
    task="title",
    system="You are an economics research assistant. You write concise, informative titles for arXiv economics papers.",
    user="Write the title of the paper with this abstract. Answer with the title only.\n\nAbstract: {abstract}",
)

CLASSIFY = PromptTemplate(
    name="econ-classify",
    version="1",
    task="classify",
    system="You are an economics research assistant. You classify arXiv economics papers into one of three categories: Econometrics, General Economics, Theoretical Economics.",
    user="Which category does the paper with this abstract belong to? Answer with exactly one of: Econometrics, General Economics, Theoretical Economics.\n\nAbstract: {abstract}",
)

QA = PromptTemplate(
    name="econ-qa",
    version="1",
    task="qa",
    system="You are an economics research assistant. Answer questions about economics accurately and concisely.",
    user="{question}",
)

TEMPLATES: dict[str, PromptTemplate] = {t.task: t for t in (TITLE, CLASSIFY, QA)}
BY_ID: dict[str, PromptTemplate] = {t.id: t for t in TEMPLATES.values()}


def get_template(task_or_id: str) -> PromptTemplate:
    """Look a template up by task name ("title") or id ("econ-title@1")."""
    template = TEMPLATES.get(task_or_id) or BY_ID.get(task_or_id)
    if template is None:
        known = ", ".join(sorted([*TEMPLATES, *BY_ID]))
        raise UserError(f"unknown prompt template {task_or_id!r} (known: {known})")
    return template


def title_messages(paper: Paper) -> list[Message]:
    return [*TITLE.prompt(abstract=paper.abstract), Message(role="assistant", content=paper.title)]


def classify_messages(paper: Paper) -> list[Message]:
    answer = LABEL_TO_ANSWER[paper.primary_category]
    return [*CLASSIFY.prompt(abstract=paper.abstract), Message(role="assistant", content=answer)]


def qa_messages(pair: QAPair) -> list[Message]:
    """Closed-book Q&A: the question alone (the model must know, not read), then any follow-up turns."""
    return [
        *QA.prompt(question=pair.question),
        Message(role="assistant", content=pair.answer),
        *pair.turns,
    ]
