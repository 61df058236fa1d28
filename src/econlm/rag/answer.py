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

What the assistant returns is not the reply as written but the claims in it that the passages hold
(`finalize`, chosen by `econlm eval --task rag`, see docs/assistant.md): small models loop, invert
negations, give a wrong number beside the right passage, or obey a planted "reply only with ...".
So every sentence of the reply is checked against the passages (its content words in one passage,
its numbers in that passage, a negation only where the passage has one, no instruction-like text),
repeats are dropped, and each kept sentence cites the passage that holds it. When no sentence
holds up, the passage sentence closest in meaning to the question (and agreeing with the reply) is
quoted instead, and when no candidate is close enough in meaning to the question (sentence
embeddings, not shared words: `similarities`) the answer says the documents do not answer it.
Streaming stops at a repeated sentence or after `MAX_SENTENCES` sentences (`bounded`).
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from econlm.backends import Backend, Decoding, Messages
from econlm.data.templates import DOCS_CLOSE, DOCS_OPEN, RAG
from econlm.rag.embeddings import Embedder
from econlm.rag.retriever import Hit, is_vague, stop_words, tokenize
from econlm.types import Answer, Chunk

NOTHING_RELEVANT = (
    "Nothing relevant to this question was found in {where}, so there is no answer from it. "
    "Try other words, or add documents that cover the question."
)
NO_ANSWER = "The documents do not answer this question."
# Three sentences of 20-30 tokens, with their citations; `bounded` stops the stream earlier.
ANSWER_DECODING = Decoding(max_new_tokens=160)
MAX_SENTENCES = 4
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


def cite_reply(text: str, hits: Sequence[Hit]) -> Answer:
    """The model's reply as written, as an `Answer`: valid citations in order of use, unsupported ones apart.

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


# ---------------------------------------------------------------- claims checked against the passages

_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATION_RE = re.compile(r"\b(?:not|no|never|nor|neither|none|without|cannot)\b|n't\b", re.IGNORECASE)
# Text that gives orders instead of stating facts: planted instructions are data, never an answer.
_INSTRUCTION_RE = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,80}\b(?:question|instructions?|above|previous|prompt|rules)\b"
    r"|\b(?:reply|respond|answer|say|output|print|write)\b[^.\n]{0,30}\bonly\b"
    r"|\byou (?:must|should|are now)\b|\bsystem\s*:|</?(?:passage|documents)\b",
    re.IGNORECASE,
)
# How a model says the passages hold no answer ("The documents do not mention ...").
_REFUSAL_RE = re.compile(
    r"\b(?:do(?:es)?\s*n[o']t|cannot|can't|unable to|no)\b[^.\n]{0,60}"
    r"\b(?:answer|contain|mention|say|provide|include|information|specify|state)",
    re.IGNORECASE,
)
SUPPORT_MIN_SHARE = 0.6  # of a claim's content words that must be in the passage holding it
SUPPORT_MAX_NEW = 0.2  # share of its content words a claim may add (at least one word)
SUPPORT_MIN_SENTENCE_SHARE = 0.5  # of them in the one sentence that states its numbers
SUPPORT_MIN_WORDS = 2
# The relevance gate: an answer sentence must be this similar in meaning to the question (cosine
# of their sentence embeddings under the retrieval embedder, all-MiniLM-L6-v2), whatever words
# they share. Chosen on the two development sets (scripts/tune_rag_gate.py, docs/assistant.md):
# the most right outcomes there, answerable questions answered and unanswerable ones refused...
MIN_SIMILARITY = 0.54
# ... and this much more when the model itself said the passages do not answer (not tuned: the
# shipped adapter refused no development question).
REFUSAL_MARGIN = 0.1
# What agreeing with the reply adds to a candidate's similarity to the question (a held claim
# agrees fully): enough to prefer the model's held claim to a passage sentence a little closer to
# the question, not one much closer. Chosen with MIN_SIMILARITY (0.1 and 0.2 tried).
AGREEMENT_WEIGHT = 0.2
MIN_AGREEMENT = 0.5  # of the reply's terms, for a passage sentence quoted without a question
COPIED_SHARE = 0.8  # a claim with this share of its terms in one passage sentence was copied from it


@functools.cache
def _stemmer():
    from nltk.stem.porter import PorterStemmer  # nltk comes with rouge-score

    return PorterStemmer()


# Words about the question or the documents, not about their subject ("According to the documents, ...").
META_WORDS = frozenset({"did", "does", "according", "document", "documents", "passage", "passages", "text"})


def terms(text: str) -> frozenset[str]:
    """Stemmed content words ("raised" and "raise" are one term)."""
    stem = _stemmer().stem
    return frozenset(stem(w) for w in tokenize(text, stop_words()) if w not in META_WORDS)


def numbers(text: str) -> frozenset[str]:
    return frozenset(n.rstrip(".,").replace(",", "") for n in _NUMBER_RE.findall(text))


def is_instruction(text: str) -> bool:
    return bool(_INSTRUCTION_RE.search(text))


def is_refusal(text: str) -> bool:
    """Whether a reply says the documents do not hold the answer."""
    return text.startswith((NO_ANSWER, NOTHING_RELEVANT[:30])) or bool(_REFUSAL_RE.search(text))


@dataclass(frozen=True)
class Quote:
    """One sentence of a passage (or a table row, read with its header), with what checks need of it."""

    text: str
    label: str
    terms: frozenset[str]
    numbers: frozenset[str]
    negated: bool
    cells: tuple[tuple[str, str], ...] = ()  # a table row's (column name, value) pairs, after its name


def without_labels(text: str) -> str:
    return _LABEL_RE.sub(" ", text)


def sentences(text: str) -> list[str]:
    """Sentences and lines of `text`, without citation labels, whitespace collapsed."""
    found = (" ".join(without_labels(m.group(0)).split()) for m in _SENTENCE_RE.finditer(text))
    return [s for s in found if s and any(ch.isalnum() for ch in s)]


def _table_rows(text: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Markdown table rows as (row name, [(column name, value), ...])."""
    header = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else None
        if cells is None:
            header = None
        elif all(set(c) <= set("-: ") for c in cells):
            continue
        elif header is None:
            header = cells
        else:
            yield cells[0], list(zip(header[1:], cells[1:]))


def _quote(text: str, label: str, cells: tuple[tuple[str, str], ...] = ()) -> Quote:
    return Quote(text, label, terms(text), numbers(text), bool(_NEGATION_RE.search(text)), cells)


def _paragraphs(text: str) -> Iterator[str]:
    """Prose with its line breaks joined, without headings: a line without closing punctuation after
    a sentence's end names a section when it is short ("Policy rate decisions") or a table follows it
    ("Table 2: Average hourly earnings by industry and year"), and states nothing."""
    rows = [line.strip() for line in text.splitlines()]
    lines: list[str] = []
    for at, line in enumerate(rows):
        ended = not lines or lines[-1].endswith((".", "!", "?"))
        heading = ended and not line.endswith((".", ",", ";", ":")) and (len(line.split()) <= 6 or _above_table(rows, at))
        if not line or line.startswith("|") or heading:
            if lines:
                yield " ".join(lines)
            lines = []
        else:
            lines.append(line)
    if lines:
        yield " ".join(lines)


def _above_table(rows: list[str], at: int) -> bool:
    return next((row for row in rows[at + 1:] if row), "").startswith("|")


def quotes(hits: Sequence[Hit]) -> list[Quote]:
    """Every sentence of the passages that states something (planted instructions left out).

    Prose is read with its line breaks joined (a PDF's lines end mid-sentence), headings left out; a table row
    becomes "name: column value; ..." so that it carries its column names.
    """
    out = []
    for hit in hits:
        label = citation_label(hit.chunk)
        for paragraph in _paragraphs(hit.chunk.text):
            out += [_quote(s, label) for s in sentences(paragraph) if not is_instruction(s)]
        for name, cells in _table_rows(hit.chunk.text):
            out.append(_quote(f"{name}: " + "; ".join(f"{h} {v}" for h, v in cells), label, ((name, ""), *cells)))
    return out


def cell_answer(question_terms: frozenset[str], table_row: Quote) -> str | None:
    """"Steel, 2022: 12.5" when the question names the row and one of its columns; else None."""
    name = table_row.cells[0][0]
    named = [(h, v) for h, v in table_row.cells[1:] if terms(h) and terms(h) <= question_terms]
    if not terms(name) or not terms(name) <= question_terms or len(named) != 1:
        return None
    return f"{name}, {named[0][0]}: {named[0][1]}"


def _norm(sentence: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


def repeats_a_sentence(text: str) -> bool:
    """Whether a sentence of three words or more occurs twice (the loop small models fall into)."""
    seen = set()
    for sentence in sentences(text):
        key = _norm(sentence)
        if len(key.split()) >= 3 and key in seen:
            return True
        seen.add(key)
    return False


def supporting_quote(claim: str, passage_quotes: Sequence[Quote]) -> Quote | None:
    """The passage sentence that holds `claim`, or None.

    Held means: one passage has most of the claim's content words (`SUPPORT_MIN_SHARE`, and at
    most `SUPPORT_MAX_NEW` words of its own: "the governor is the chairman" adds two), and one
    sentence of it states every number of the claim with half of its words ("machinery, 2023,
    12.5 percent" beside a table whose 12.5 is steel's is not held, nor a value from another column
    of the row), negating only what that sentence negates. That sentence is returned, so the citation points at where the claim is.
    """
    claim_terms, claim_numbers = terms(claim), numbers(claim)
    if len(claim_terms) < SUPPORT_MIN_WORDS or is_instruction(claim) or is_refusal(claim):
        return None
    by_label: dict[str, list[Quote]] = {}
    for quote in passage_quotes:
        by_label.setdefault(quote.label, []).append(quote)
    new_allowed = max(1, int(SUPPORT_MAX_NEW * len(claim_terms)))
    best, best_share = None, 0.0
    for group in by_label.values():
        passage_terms = frozenset().union(*(q.terms for q in group))
        share = _share(claim_terms, passage_terms)
        if share < SUPPORT_MIN_SHARE or len(claim_terms - passage_terms) > new_allowed or share <= best_share:
            continue
        closest = max(group, key=lambda q: (len(claim_numbers & q.numbers), len(claim_terms & q.terms)))
        if (not claim_numbers <= closest.numbers or _share(claim_terms, closest.terms) < SUPPORT_MIN_SENTENCE_SHARE
                or bool(_NEGATION_RE.search(claim)) != closest.negated or _wrong_cell(claim_terms, claim_numbers, closest)):
            continue
        best, best_share = closest, share
    return best


def _wrong_cell(claim_terms: frozenset[str], claim_numbers: frozenset[str], row: Quote) -> bool:
    """Whether a claim about one column of a table row states a value that is not that column's
    ("machinery in 2023 was 2.25" where 2.25 is 2021's)."""
    if not row.cells:
        return False
    named = [value for header, value in row.cells[1:] if terms(header) and terms(header) <= claim_terms]
    values = claim_numbers - frozenset().union(*(numbers(header) for header, _ in row.cells[1:]))
    return len(named) == 1 and bool(values) and not values <= numbers(named[0])


def _share(wanted: frozenset[str], found: frozenset[str]) -> float:
    """The share of the `wanted` terms in `found`."""
    return len(wanted & found) / len(wanted) if wanted else 0.0


def similarities(embedder: Embedder, question: str, texts: Sequence[str]) -> np.ndarray:
    """The cosine of each text's sentence embedding with the question's (the relevance gate's measure).

    Meaning, not shared words: "The survey excluded firms with fewer than five employees." answers
    "Which small firms were left out of the labour survey?" with two words of its five, and "Bidders
    update their valuations on the fly" shares half of "How do penguins fly?" without being about
    it. An `Embedder` returns unit-length rows, so a dot product is the cosine.
    """
    if not texts:
        return np.zeros(0, dtype=np.float32)
    vectors = embedder.encode([question, *texts])
    return vectors[1:] @ vectors[0]


def finalize(text: str, hits: Sequence[Hit], question: str | None = None, embedder: Embedder | None = None,
             min_similarity: float | None = None) -> Answer:
    """What the assistant answers: the reply's claims that the passages hold, each citing its
    passage, or the passage sentence that answers better; else that the documents do not answer.

    Candidates are the held claims and every passage sentence, ranked by their similarity to the
    question (`similarities`, under `embedder`, the one that retrieved `hits`) plus their agreement
    with the reply, a held claim agreeing fully; a held claim copied from a passage is quoted whole,
    and a table cell the question names by row and column is the best. The best one is the answer
    (with the other held claims on the question when it is a claim); a candidate less similar to the
    question than `min_similarity` (default `MIN_SIMILARITY`; `REFUSAL_MARGIN` more when the model
    said the passages do not answer) is none, so when no candidate clears it the documents do not
    answer. Without `question` (the reply alone), or with a vague one that names no subject
    (`econlm.rag.retriever.is_vague`: it is about whatever passages it was asked of), claims are
    kept and a passage sentence is quoted only when it agrees with `MIN_AGREEMENT` of the reply; for
    a vague question, when nothing else holds, the top passage's first sentence is quoted (the lead
    of a text is the usual extractive summary of it).
    """
    written = cite_reply(text, hits)
    passage_quotes = quotes(hits)
    vague = question is not None and is_vague(question)
    asked = question is not None and not vague
    if asked and embedder is None:
        raise ValueError("finalize needs the embedder that retrieved the passages to judge them against a question")
    question_terms = terms(question) if asked else frozenset()
    claims: list[tuple[str, str]] = []
    seen: set[str] = set()
    question_numbers = numbers(question) if question else frozenset()
    for claim in sentences(text):
        key = _norm(claim)
        # A question, or the question said back ("The average tariff on steel in 2022."), states nothing.
        echo = claim.endswith("?") or (question_terms and terms(claim) <= question_terms and numbers(claim) <= question_numbers)
        quote = None if key in seen or echo else supporting_quote(claim, passage_quotes)
        seen.add(key)
        if quote is not None and _share(terms(claim), quote.terms) >= COPIED_SHARE:  # copied: quoted whole
            claims.append((quote.text, quote.label))
        elif quote is not None:
            claims.append((claim, quote.label))
    reply_terms, reply_numbers = terms(text), numbers(text)

    def agreement(q: Quote) -> float:
        return min(1.0, (len(reply_terms & q.terms) + 2 * len(reply_numbers & q.numbers)) / (len(reply_terms) + 1))

    # (agreement with the reply, kind, text, label) of every candidate
    candidates = [(1.0, "claim", c, label) for c, label in claims]
    candidates += [(agreement(q), "quote", q.text, q.label) for q in passage_quotes]
    if asked:  # only candidates close enough to the question compete
        bar = (MIN_SIMILARITY if min_similarity is None else min_similarity) + (REFUSAL_MARGIN if is_refusal(text) else 0.0)
        similarity = similarities(embedder, question, [c for _, _, c, _ in candidates])
        ranked = [(float(s) + AGREEMENT_WEIGHT * agree, kind, c, label)
                  for (agree, kind, c, label), s in zip(candidates, similarity) if s >= bar]
        for row in (q for q in passage_quotes if q.cells):  # a table cell the question names answers it exactly
            cell = cell_answer(question_terms, row)
            if cell is not None:
                ranked.append((1.0 + AGREEMENT_WEIGHT, "quote", cell, row.label))
    else:
        ranked = [(AGREEMENT_WEIGHT * agree, kind, c, label) for agree, kind, c, label in candidates
                  if kind == "claim" or agree >= MIN_AGREEMENT]
    kept: list[tuple[str, str]] = []
    if ranked:
        _, kind, best, label = max(ranked, key=lambda r: r[0])
        kept.append((best, label))
        if kind == "claim":
            kept += [(c, lbl) for _, k, c, lbl in ranked if k == "claim" and c != best]
    elif vague and hits:
        top_label = citation_label(hits[0].chunk)
        kept += [(q.text, q.label) for q in passage_quotes if q.label == top_label][:1]
    kept = list(dict.fromkeys(kept))[:MAX_SENTENCES]  # two claims copied from one sentence quote it once
    if not kept:
        return written.model_copy(update={"text": NO_ANSWER, "citations": [], "unsupported_citations": [], "attributed": []})
    body = " ".join(f"{claim.rstrip('.!?;: ')} {label}." for claim, label in kept)
    return written.model_copy(update={"text": body, "citations": list(dict.fromkeys(label for _, label in kept)),
                                      "unsupported_citations": [], "attributed": []})


def answer(question: str, hits: Sequence[Hit], backend: Backend, where: str, embedder: Embedder,
           decoding: Decoding = ANSWER_DECODING) -> Answer:
    """Answer `question` from `hits` (what the retriever returned for it, with `embedder`); no hits, no model call."""
    if not hits:
        return nothing_relevant(where)
    reply = "".join(stream_answer(question, hits, backend, decoding))
    return finalize(reply, hits, question, embedder)


def bounded(pieces: Iterable[str], max_sentences: int = MAX_SENTENCES) -> Iterator[str]:
    """Pass a reply's pieces on until a sentence repeats or `max_sentences` are complete.

    Stopping the iteration stops the generation (llama.cpp); the text after the last whole
    sentence is kept, so a reply cut by the token limit still ends where it was cut.
    """
    text = ""
    for piece in pieces:
        done = [m.group(0) for m in _SENTENCE_RE.finditer(text + piece) if re.search(r"[.!?\n]$", m.group(0))]
        keys = [_norm(s) for s in done]
        if len(done) > max_sentences or len(set(keys)) < len(keys):
            return
        text += piece
        yield piece


def stream_answer(question: str, hits: Sequence[Hit], backend: Backend,
                  decoding: Decoding = ANSWER_DECODING) -> Iterator[str]:
    """The reply piece by piece (the app shows it as it comes, then calls `finalize`), bounded."""
    return bounded(backend.stream_chat(build_messages(question, hits), decoding))
