"""What the pages do, without Streamlit: model calls on the task templates, and adding uploads.

The prompts are the training templates (`econlm.data.templates`), asked the way `econlm eval`
asks them (`econlm.evaluate.title_conversations`), so the app asks a fine-tuned model exactly what
it learned to answer: a model trained on classify-then-title sequences gets its title question
after its own category turn.
"""

from __future__ import annotations

import math

from econlm.backends import Backend, Decoding, Messages
from econlm.data.templates import CLASSIFY, LABEL_TO_ANSWER, QA
from econlm.errors import UserError
from econlm.evaluate import title_conversations
from econlm.rag.assistant import AddReport, add_files
from econlm.rag.loaders import ParseLimits
from econlm.types import CATEGORIES, normalize_ws

TITLE_DECODING = Decoding(max_new_tokens=48)
# Alternatives are sampled: greedy decoding would return the same title three times.
ALTERNATIVES_DECODING = Decoding(max_new_tokens=48, temperature=0.8, top_p=0.95, num_return_sequences=3, seed=1)
QA_DECODING = Decoding(max_new_tokens=256)


def _abstract(text: str) -> str:
    abstract = normalize_ws(text)
    if not abstract:
        raise UserError("paste an abstract first")
    return abstract


def _clean_title(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line.strip().strip('"').removeprefix("Title:").strip()


def suggest_titles(backend: Backend, abstract: str, alternatives: bool = False, *,
                   after_category: bool) -> tuple[str, list[str]]:
    """The greedy title, and three sampled alternatives when asked. `after_category`: the model
    learned titles after its category turn (`econlm.evaluate.trained_jointly`, read at load)."""
    conversation = title_conversations(backend, [_abstract(abstract)], after_category)[0][0]
    title = _clean_title(backend.chat([conversation], TITLE_DECODING)[0][0])
    others = [_clean_title(t) for t in backend.chat([conversation], ALTERNATIVES_DECODING)[0]] if alternatives else []
    return title, others


def classify(backend: Backend, abstract: str, classifier=None) -> dict[str, float]:
    """Probability of each category (econ.EM, econ.GN, econ.TH): the econlm classifier's when given
    (`econlm.classifier`, fitted on this backend's model), else a softmax over the answers' log-likelihoods.
    CLASSIFY's prompt is also the first turn of a classify-then-title sequence, so it asks either kind of model."""
    abstract = _abstract(abstract)
    labels = list(CATEGORIES)
    if classifier is not None:
        from econlm.classifier import LABELS, probabilities

        row = probabilities(classifier, backend, [abstract])[0]
        return {label: float(row[LABELS.index(label)]) for label in labels}
    conversation = [m.model_dump() for m in CLASSIFY.prompt(abstract=abstract)]
    scores = backend.score_options([conversation], [LABEL_TO_ANSWER[label] for label in labels])[0]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    return {label: w / sum(weights) for label, w in zip(labels, weights)}


def qa_conversation(history: list[dict], question: str) -> Messages:
    """The Q&A system prompt, the chat so far (role/content pairs), and the new question."""
    if not question.strip():
        raise UserError("type a question first")
    turns = [{"role": m["role"], "content": m["content"]} for m in history]
    return [{"role": "system", "content": QA.system}, *turns, {"role": "user", "content": question.strip()}]


def add_uploads(index_name: str, files: list[tuple[str, bytes]], embedder, limits: ParseLimits) -> AddReport:
    """The upload: each file parsed on its own, so one bad file costs only itself; the good ones are added."""
    return add_files(index_name, files, embedder, limits, keep_good=True)
