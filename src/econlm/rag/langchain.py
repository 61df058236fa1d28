"""LangChain components over econlm, for users who compose their own chains (`pip install 'econlm[langchain]'`):

- `EconlmRetriever`: a `BaseRetriever` over an econlm index (papers or uploaded documents), the
  app's hybrid search, returning `Document`s with their source, page and arXiv id as metadata.
- `ChatEconlm`: a `BaseChatModel` over any econlm engine spec (`transformers:econlm`,
  `llamacpp:FILE.gguf`, `openai:NAME`), through `econlm.backends.get_backend`.

Both pass langchain-tests' standard suites (tests/test_langchain.py). The model has no tool
calling or structured output: econlm's models were not trained for either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from econlm.backends import Decoding, Messages
from econlm.rag.assistant import DEFAULT_K, PAPERS, citation, default_embedder, existing_index

ROLES = {"system": "system", "human": "user", "ai": "assistant"}


class EconlmRetriever(BaseRetriever):
    """The passages an econlm index holds for a query: dense + BM25, fused, relevance-filtered.

    `index` names an index under $ECONLM_HOME/indexes (`papers`, or one from `econlm index add`);
    `embedder` defaults to the packaged MiniLM the indexes are built with. Fewer than `k`
    documents come back when fewer are relevant.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: str = PAPERS
    k: int = DEFAULT_K
    embedder: Any = Field(default=None, exclude=True)
    _retriever: Any = PrivateAttr(default=None)

    def _hybrid(self):
        from econlm.rag import store
        from econlm.rag.retriever import HybridRetriever

        if self._retriever is None:
            embedder = self.embedder if self.embedder is not None else default_embedder()
            self._retriever = HybridRetriever(store.load_index(existing_index(self.index), embedder.name), embedder)
        return self._retriever

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[Document]:
        documents = []
        for hit in self._hybrid().search(query, k or self.k):
            cited = citation(hit.chunk)
            metadata = {**hit.chunk.metadata, "source": cited.source, "page": cited.page, "arxiv_id": cited.arxiv_id,
                        "citation": cited.label, "score": hit.score, "cosine": hit.cosine}
            documents.append(Document(page_content=hit.chunk.text, metadata=metadata))
        return documents


class ChatEconlm(BaseChatModel):
    """A chat model over an econlm engine spec; the backend is built on first use (and kept).

    `max_tokens`, `temperature` and `stop` map to econlm's `Decoding` (the stop strings cut the
    reply). `backend` takes a backend already built, for callers that hold one.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = "transformers:econlm"
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] | None = None
    backend: Any = Field(default=None, exclude=True)
    _backends: dict = PrivateAttr(default_factory=dict)
    _building: Any = PrivateAttr(default_factory=threading.Lock)  # `batch` calls from several threads at once

    @property
    def _llm_type(self) -> str:
        return "econlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(ls_provider="econlm", ls_temperature=self.temperature, ls_max_tokens=self.max_tokens)
        return params

    def _backend(self, model: str | None):
        """The backend for `model` (a per-call override) or this model's spec, built once each."""
        from econlm.backends import get_backend

        spec = model or self.model
        if spec == self.model and self.backend is not None:
            return self.backend
        with self._building:
            if spec not in self._backends:
                self._backends[spec] = get_backend(spec)
            return self._backends[spec]

    def _decoding(self) -> Decoding:
        return Decoding(max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        backend = self._backend(kwargs.get("model"))
        conversation = _conversation(messages)
        reply = _cut(backend.chat([conversation], self._decoding())[0][0], stop or self.stop or ())
        message = AIMessage(content=reply, usage_metadata=_usage(backend, conversation, reply),
                            response_metadata={"model_name": backend.name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """The reply piece by piece; text that may be the start of a stop string is held back until it is not."""
        backend = self._backend(kwargs.get("model"))
        conversation = _conversation(messages)
        stops = [s for s in (stop or self.stop or ()) if s]
        raw, sent = "", 0
        for piece in backend.stream_chat(conversation, self._decoding()):
            raw += piece
            text = _cut(raw, stops)
            stopped = len(text) < len(raw)
            ready = len(text) if stopped else len(text) - _stop_prefix(text, stops)
            if ready > sent:
                if run_manager:
                    run_manager.on_llm_new_token(text[sent:ready])
                yield ChatGenerationChunk(message=AIMessageChunk(content=text[sent:ready]))
                sent = ready
            if stopped:
                break
        text = _cut(raw, stops)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=text[sent:], usage_metadata=_usage(backend, conversation, text),
            response_metadata={"model_name": backend.name}, chunk_position="last"))


def _conversation(messages: Sequence[BaseMessage]) -> Messages:
    """LangChain messages as econlm's role/content turns (roles a chat template knows)."""
    turns = []
    for message in messages:
        role = ROLES.get(message.type)
        if role is None:
            from econlm.errors import UserError

            raise UserError(f"econlm chat models take system, human and ai messages, not {message.type!r}")
        turns.append({"role": role, "content": message.text})
    return turns


def _cut(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string."""
    for s in stop:
        if s:
            text = text.split(s, 1)[0]
    return text


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that begins a stop string (it may yet become one)."""
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def _usage(backend, conversation: Messages, reply: str) -> UsageMetadata | None:
    """Token counts by the model's tokenizer; None for an endpoint, whose tokenizer is not here."""
    if not backend.has_tokenizer:
        return None
    prompt = backend.count_tokens(backend.chat_prompt(conversation))
    output = backend.count_tokens(reply)
    return UsageMetadata(input_tokens=prompt, output_tokens=output, total_tokens=prompt + output)
