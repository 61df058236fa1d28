"""Cached loaders and small display helpers shared by the pages.

The model and the embedder are loaded once per process (`st.cache_resource`) and put in session
state; a test (or a future settings page) can put its own backend or embedder there first.
Every page shows which model answers.

What users or models wrote (file names, passages, questions, replies, titles) is shown as text:
with `st.text` where the element allows it, else through `escape_markdown`, never as Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import streamlit as st

from econlm.app import settings
from econlm.errors import UserError
from econlm.rag import store
from econlm.rag.answer import citation_label
from econlm.types import Answer, Chunk


@st.cache_resource(show_spinner="Loading the model ...")
def _load_backend(spec: str):
    from econlm.backends import get_backend

    return get_backend(spec)


@st.cache_resource(show_spinner="Loading the embedding model ...")
def _load_embedder():
    from econlm.rag.embeddings import MiniLMEmbedder

    return MiniLMEmbedder()


@st.cache_resource(show_spinner="Loading the index ...", max_entries=8)
def _load_retriever(path: str, digest: str, embedder_name: str, _embedder):
    """Keyed by the index's content hash: adding documents changes it and reloads the index."""
    from econlm.rag.retriever import HybridRetriever

    return HybridRetriever(store.load_index(path, embedder_name), _embedder)


@st.cache_resource(show_spinner="Loading the econlm classifier ...")
def _load_classifier(path: str):
    from econlm.classifier import StackedClassifier

    return StackedClassifier.load(path)


def fail(message: str) -> None:
    """Show a problem and stop this page's run; the app and other pages carry on."""
    st.error(escape_markdown(message))  # messages name files and indexes users chose
    st.stop()


def backend():
    if "backend" not in st.session_state:
        try:
            st.session_state["backend"] = _load_backend(settings.backend_choice().spec)
        except UserError as exc:
            fail(f"The model could not be loaded: {exc}")
    return st.session_state["backend"]


def title_after_category() -> bool:
    """Whether the model learned titles after its category turn (classify-then-title sequences), as
    its training run's record says; read once per session, so the Title page asks it that way."""
    if "title_after_category" not in st.session_state:
        from econlm.evaluate import trained_jointly, training_record

        st.session_state["title_after_category"] = trained_jointly(training_record(backend().source_model), "title")
    return st.session_state["title_after_category"]


def classifier():
    """The shipped econlm classifier when it was fitted on the model this app runs, else None (the
    Classify page then shows the model's own probabilities over the three answers)."""
    from econlm.classifier import fitted_on, shipped_classifier_dir

    folder = shipped_classifier_dir()
    if not folder.is_dir():
        return None
    loaded = _load_classifier(str(folder))
    return loaded if fitted_on(loaded, backend()) else None


def embedder():
    if "embedder" not in st.session_state:
        try:
            st.session_state["embedder"] = _load_embedder()
        except UserError as exc:
            fail(f"The embedding model could not be loaded: {exc}")
    return st.session_state["embedder"]


def retriever(path: Path):
    """The hybrid retriever of the index at `path`; a corrupt or foreign index stops the page with why."""
    try:
        manifest = store.read_manifest(path)
        return _load_retriever(str(path), manifest["files"][store.INDEX_FILE], embedder().name, embedder())
    except UserError as exc:
        fail(f"This index cannot be used: {exc}")


def model_caption() -> None:
    """Which model answers on this page (a loaded or injected one, else the configured spec)."""
    choice = settings.backend_choice()
    loaded = st.session_state.get("backend")
    name = loaded.name if loaded is not None else choice.spec
    note = choice.note if loaded is None or loaded.name == choice.spec else "set for this session"
    st.caption(f"Model: `{name}` ({note})")


def top_k() -> int:
    return int(st.session_state.get("top_k") or settings.top_k())


# Every ASCII punctuation character, each of which CommonMark lets a backslash make literal.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def escape_markdown(text: str) -> str:
    """`text` to show literally where Streamlit only offers Markdown (alerts, captions, headings,
    labels): a file named `![x](http://host/leak.png)` would otherwise make the browser fetch that
    URL. Escaping all punctuation, not a chosen few, also disarms HTML, entities, autolinks and
    Streamlit's own `:color[...]`, `:icon:` and `$math$`; each line ends in a hard break so lines
    stay lines. Hand-written because Streamlit ships no escaper and CommonMark makes it one rule."""
    return "  \n".join(_MARKDOWN_PUNCTUATION.sub(r"\\\1", line) for line in text.split("\n"))


def stream_text(pieces: Iterable[str], sink: list[str]) -> None:
    """Show a reply as plain text while it streams (`st.write_stream` would render Markdown),
    keeping the raw pieces in `sink`."""
    slot = st.empty()
    for piece in pieces:
        sink.append(piece)
        slot.text("".join(sink))


def stream_rag_answer(question: str, hits) -> Answer:
    """Show the model's reply to `question` as it streams, then replace it with the final text: the
    claims checked against `hits` and against the question (`econlm.rag.answer.finalize`)."""
    from econlm.rag.answer import finalize, stream_answer

    slot = st.empty()
    raw: list[str] = []
    with slot.container():
        stream_text(stream_answer(question, hits, backend()), raw)
    answer = finalize("".join(raw), hits, question, embedder())
    slot.text(answer.text)
    return answer


def show_passages(passages: list[Chunk], expanded: bool) -> None:
    """The retrieved passages under an answer, as plain text (never rendered as markdown)."""
    if not passages:
        return
    with st.expander(f"Retrieved passages ({len(passages)})", expanded=expanded):
        for chunk in passages:
            st.markdown(f"**{escape_markdown(citation_label(chunk))}**")  # Markdown for the bold
            st.text(chunk.text)


def show_answer(answer: Answer, expanded: bool, with_text: bool = True) -> None:
    """An answer's text (unless already shown), its citations, and the passages it read."""
    if with_text:
        st.text(answer.text)
    if answer.citations:
        note = f" ({', '.join(answer.attributed)} added where a sentence matches the passage)" if answer.attributed else ""
        st.caption(escape_markdown("Cites: " + " ".join(answer.citations) + note))
    if answer.unsupported_citations:
        st.warning(escape_markdown("The model also cited sources that were not retrieved: "
                                   + ", ".join(answer.unsupported_citations)))
    show_passages(answer.passages, expanded)
