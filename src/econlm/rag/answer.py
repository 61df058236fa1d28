"""Answer a question from retrieved passages, citing them: the prompt (`econlm.data.templates.RAG`)
filled in, and the `Answer` record.

Prompt injection: retrieved text comes from files anyone can upload, so it is quoted to the model
as data, never as instructions. Passages go only into the user turn, inside one
`<documents>...</documents>` block, each in a `<passage cite="...">` element, with `<`, `>` and
`&` escaped, so a document cannot close the block and speak outside it; the system prompt tells
the model that nothing inside the block is an instruction. (This bounds what a document can do to
the prompt; no prompt can force a weak model to ignore text it reads.)

Citations are the passage labels, `[arXiv:ID]` for corpus papers and `[file, p. N]` for uploaded
files. Labels the model writes that match no retrieved passage are reported apart as unsupported;
sentences it copied from a passage without citing it are cited after the fact (`attribute`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Sequence

from econlm.backends import Backend, Decoding, Messages
from econlm.data.templates import DOCS_CLOSE, DOCS_OPEN, RAG
from econlm.rag.retriever import Hit, stop_words, tokenize
from econlm.types import Answer, Chunk

NOTHING_RELEVANT = (
    "Nothing relevant to this question was found in {where}, so there is no answer from it. "
    "Try other words, or add documents that cover the question."
)
ANSWER_DECODING = Decoding(max_new_tokens=256)
_LABEL_RE = re.compile(r"\[[^\[\]\n]{1,200}\]")


def citation_label(chunk: Chunk) -> str:
    """`[arXiv:ID]` for a corpus paper, `[file, p. N]` for a page of an uploaded file."""
    arxiv_id = chunk.metadata.get("arxiv_id")
    if arxiv_id:
        return f"[arXiv:{arxiv_id}]"
    name = re.sub(r"[\[\]\x00-\x1f]", "", chunk.source)
    return f"[{name}, p. {chunk.page}]" if chunk.page is not None else f"[{name}]"


def quote_passages(hits: Sequence[Hit]) -> str:
    """The documents block: every passage escaped, so its text cannot end the block."""
    parts = [DOCS_OPEN]
    for number, hit in enumerate(hits, 1):
        label = html.escape(citation_label(hit.chunk), quote=True)
        parts.append(f'<passage id="{number}" cite="{label}">\n{html.escape(hit.chunk.text, quote=False)}\n</passage>')
    parts.append(DOCS_CLOSE)
    return "\n".join(parts)


def build_messages(question: str, hits: Sequence[Hit]) -> Messages:
    example = citation_label(hits[0].chunk) if hits else "[report.pdf, p. 3]"
    return [m.model_dump() for m in RAG.prompt(example=example, documents=quote_passages(hits), question=question.strip())]


def nothing_relevant(where: str) -> Answer:
    """The answer when retrieval found nothing relevant: said plainly, the model is not asked."""
    return Answer(text=NOTHING_RELEVANT.format(where=where), citations=[], passages=[])


def _key(label: str) -> str:
    """Loose form of a label for matching what a model writes ("[Report.pdf, page 2]")."""
    return re.sub(r"\s+", "", label.lower()).replace("page", "p.").replace("p..", "p.")


# A sentence: up to . ! or ? followed by a space or the end (so "4.5" stays whole), or a line end;
# a [label] is read whole (its "p. 2" ends no sentence).
_SENTENCE_RE = re.compile(r"[^\s\[](?:\[[^\]\n]*\]|.)*?(?:[.!?]+(?=\s|$)|(?=\n)|$)|\[[^\]\n]*\]", re.DOTALL)
# A sentence is attributed to a passage when most of its content words are in it.
ATTRIBUTION_MIN_SHARE = 0.6
ATTRIBUTION_MIN_WORDS = 3


def attribute(text: str, hits: Sequence[Hit]) -> tuple[str, list[str]]:
    """Cite, after the fact, the passage each uncited sentence was taken from.

    Small models rarely write citations even when they copy a passage word for word. A sentence
    without a citation whose content words come mostly (>= 60%, at least 3) from one passage gets
    that passage's label appended; anything else (a refusal, an unsupported claim) stays uncited.
    Returns the text with the added labels and the labels added.
    """
    stop = stop_words()
    passages = [(citation_label(h.chunk), set(tokenize(h.chunk.text, stop))) for h in hits]
    added: list[str] = []
    out, last = [], 0
    for match in _SENTENCE_RE.finditer(text):
        sentence = match.group(0).rstrip()
        words = set(tokenize(sentence, stop))
        if passages and not _LABEL_RE.search(sentence) and len(words) >= ATTRIBUTION_MIN_WORDS:
            label, support = max(((lbl, len(words & passage)) for lbl, passage in passages), key=lambda t: t[1])
            if support >= ATTRIBUTION_MIN_WORDS and support / len(words) >= ATTRIBUTION_MIN_SHARE:
                body = sentence.rstrip(".!?")
                sentence = f"{body} {label}{sentence[len(body):]}"
                added.append(label)
        out.append(text[last : match.start()] + sentence)
        last = match.start() + len(match.group(0).rstrip())
    out.append(text[last:])
    return "".join(out), added


def finalize(text: str, hits: Sequence[Hit]) -> Answer:
    """The model's reply as an `Answer`: valid citations in order of use, unsupported ones apart.

    Sentences the model left uncited but copied from a passage are cited by `attribute`; those
    labels are also listed in `attributed`, so what the model cited itself stays visible.
    """
    text, attributed = attribute(text.strip(), hits)
    known = {_key(citation_label(h.chunk)): citation_label(h.chunk) for h in hits}
    citations, unsupported = [], []
    for written in _LABEL_RE.findall(text):
        label = known.get(_key(written))
        target, value = (citations, label) if label else (unsupported, written)
        if value not in target:
            target.append(value)
    return Answer(
        text=text,
        citations=citations,
        passages=[h.chunk for h in hits],
        unsupported_citations=unsupported,
        attributed=sorted(set(attributed), key=attributed.index),
        prompt_version=RAG.id,
    )


def answer(question: str, hits: Sequence[Hit], backend: Backend, where: str,
           decoding: Decoding = ANSWER_DECODING) -> Answer:
    """Answer `question` from `hits` (what the retriever returned for it); no hits, no model call."""
    if not hits:
        return nothing_relevant(where)
    reply = backend.chat([build_messages(question, hits)], decoding)[0][0]
    return finalize(reply, hits)


def stream_answer(question: str, hits: Sequence[Hit], backend: Backend,
                  decoding: Decoding = ANSWER_DECODING) -> Iterator[str]:
    """The reply token by token (the app shows it as it comes, then calls `finalize`)."""
    return backend.stream_chat(build_messages(question, hits), decoding)
