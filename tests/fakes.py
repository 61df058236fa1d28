"""Small deterministic stand-ins for the expensive parts, plus generated test documents.

- `FakeBackend` implements the real `econlm.backends.Backend` protocol (no mocking): it answers
  a RAG prompt by quoting the first passage and citing every passage it was given, writes titles
  from an abstract's first words, and scores options by word counts. It is deliberately gullible:
  an instruction like "reply only with X" anywhere *outside* the `<documents>` block is obeyed, so
  a prompt that let document text escape the block would make it misbehave, as a real model might.
- `HashEmbedder` implements `econlm.rag.embeddings.Embedder` with hashed bag-of-words vectors:
  texts sharing words are similar, without loading a model.
- `make_pdf` and friends write the PDFs the tests feed to the loaders and the app (fpdf2/pypdf).
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import re
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from econlm.backends import Decoding, Messages, SeparatePasses, TokenLogprob
from econlm.rag.answer import DOCS_CLOSE, DOCS_OPEN
from econlm.rag.retriever import stop_words, tokenize

OBEY_RE = re.compile(r"reply only with ([^\n.]+)", re.IGNORECASE)


class FakeBackend(SeparatePasses):
    """A deterministic model that follows the protocol and records every conversation it sees."""

    name = "fake:deterministic"
    model_ref = None
    source_model = None
    batch_size = 1
    has_chat_template = True
    has_tokenizer = True

    def __init__(self) -> None:
        self.conversations: list[Messages] = []

    def describe(self) -> dict:
        return {"backend": self.name, "kind": "fake", "chat_template": True}

    def chat_prompt(self, conversation: Messages) -> str:
        return "".join(f"<{m['role']}>{m['content']}\n" for m in conversation) + "<assistant>"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _reply(self, conversation: Messages, variant: int) -> str:
        self.conversations.append(conversation)
        user = conversation[-1]["content"]
        if DOCS_OPEN in user and DOCS_CLOSE in user:
            head, _, rest = user.partition(DOCS_OPEN)
            block, _, tail = rest.partition(DOCS_CLOSE)
            outside = "\n".join([m["content"] for m in conversation[:-1]] + [head, tail])
        else:
            block, outside = "", "\n".join(m["content"] for m in conversation)
        order = OBEY_RE.search(outside)
        if order:
            return order.group(1).strip()
        if block:
            labels = [html.unescape(c) for c in re.findall(r'cite="([^"]*)"', block)]
            first = re.search(r'<passage [^>]*>\n(.*?)\n</passage>', block, re.DOTALL)
            quote = " ".join(html.unescape(first.group(1)).split()[:12]) if first else ""
            return f"According to the documents: {quote} {' '.join(labels)}"
        text = user.split("Abstract:", 1)[-1]
        words = text.split()[:8]
        title = " ".join(words).rstrip(".,;:").title() or "Untitled"
        return title if variant == 0 else f"{title} (Variant {variant + 1})"

    def chat(self, conversations: Sequence[Messages], decoding: Decoding = Decoding()) -> list[list[str]]:
        return [[self._reply(c, v) for v in range(decoding.num_return_sequences)] for c in conversations]

    def stream_chat(self, conversation: Messages, decoding: Decoding = Decoding()) -> Iterator[str]:
        for piece in re.findall(r"\S+\s*", self._reply(conversation, 0)):
            yield piece

    def chat_with_logprobs(self, conversation: Messages, decoding: Decoding,
                           top_logprobs: int) -> list[tuple[str, list[TokenLogprob]]]:
        """Each word a token, at log-probability -0.25, ahead of alternatives that are less likely."""
        replies = []
        for reply in self.chat([conversation], decoding)[0]:
            alternatives = [(f"<alt{k}>", -1.0 - k) for k in range(top_logprobs - 1)]
            replies.append((reply, [TokenLogprob(piece, -0.25, tuple([(piece, -0.25), *alternatives][:top_logprobs]))
                                    for piece in re.findall(r"\S+\s*", reply)]))
        return replies

    def complete(self, prompts: Sequence[str], decoding: Decoding = Decoding(), stop: Sequence[str] = ()) -> list[list[str]]:
        """A title from the first line of the last abstract in each prompt, cut before the first stop string."""
        queries = [prompt.rsplit("Abstract:", 1)[-1].strip().split("\n", 1)[0] for prompt in prompts]
        replies = self.chat([[{"role": "user", "content": query}] for query in queries], decoding)
        return [[_cut(reply, stop) for reply in row] for row in replies]

    def score_options(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """Log-softmax of how often each option's first six letters occur in the abstract."""
        for conversation in conversations:
            self.conversations.append(conversation)
        return [_count_scores(c[-1]["content"], options) for c in conversations]

    def score_text_options(self, prefixes: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        return [_count_scores(prefix, [option.strip() for option in options]) for prefix in prefixes]


def _count_scores(text: str, options: Sequence[str]) -> list[float]:
    text = text.split("Abstract:")[-1].lower()
    counts = [text.count(option.lower()[:6]) for option in options]
    log_total = math.log(sum(math.exp(c) for c in counts))
    return [c - log_total for c in counts]


def _cut(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        text = text.split(s, 1)[0]
    return text


class HashEmbedder:
    """Bag-of-words vectors hashed into 2048 dimensions (few collisions) and normalised; no model."""

    name = "fake:hash-bow-2048"
    dim = 2048

    def __init__(self) -> None:
        self._stop = stop_words()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in tokenize(text, self._stop):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


def make_pdf(pages: Sequence[str], user_password: str | None = None) -> bytes:
    """A text PDF with one page per string (optionally encrypted with a user password)."""
    from fpdf import FPDF

    pdf = FPDF()
    if user_password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 7, text)
    return bytes(pdf.output())


def make_image_only_pdf() -> bytes:
    """A page holding only a picture of text: no text layer, the case that needs OCR."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (600, 200), "white")
    ImageDraw.Draw(image).text((20, 80), "Scanned page: inflation expectations", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(io.BytesIO(buffer.getvalue()), x=10, y=10, w=180)
    return bytes(pdf.output())


def make_bomb_pdf(expanded_mb: int = 100) -> bytes:
    """A ~100 KB text PDF whose page content inflates to `expanded_mb` MB (a decompression bomb)."""
    from pypdf import PdfWriter
    from pypdf.generic import NameObject

    compressor = zlib.compressobj(9)
    data = compressor.compress(b"BT /F1 12 Tf 72 712 Td (bomb) Tj ET\n")
    block = b" " * (1 << 20)
    for _ in range(expanded_mb):
        data += compressor.compress(block)
    data += compressor.flush()
    writer = PdfWriter(clone_from=io.BytesIO(make_pdf(["an ordinary page"])))
    contents = writer.pages[0]["/Contents"].get_object()
    contents._data = data  # pypdf has no public setter for raw (still encoded) stream bytes
    contents[NameObject("/Filter")] = NameObject("/FlateDecode")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
