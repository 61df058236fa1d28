"""Generation and scoring backends: one interface for every place econlm runs a model.

Evaluation, the app, Q&A synthesis and serving all talk to a `Backend`, chosen by a spec string:

    transformers:<model>   in-process transformers (default); <model> is anything
                           `econlm.models.resolve` accepts (packaged name, folder, .gguf, hub id,
                           adapter/run dir, or "econlm" for the shipped adapter)
    openai:<model>         any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server,
                           Ollama); base URL from $OPENAI_BASE_URL, key from $OPENAI_API_KEY
    llamacpp:<file.gguf>   llama.cpp in-process through llama-cpp-python (extra `[fast]`)

A bare model reference means `transformers:<model>`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass(frozen=True)
class Decoding:
    """Decoding settings, recorded with every prediction file."""

    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@runtime_checkable
class Backend(Protocol):
    name: str  # e.g. "transformers:econlm", recorded in provenance

    def chat(self, conversations: Sequence[Messages], decoding: Decoding = Decoding()) -> list[list[str]]:
        """Assistant replies for a batch of conversations: one list of `num_return_sequences`
        strings per conversation."""
        ...

    def stream_chat(self, conversation: Messages, decoding: Decoding = Decoding()) -> Iterator[str]:
        """The assistant reply for one conversation, yielded piece by piece as it is generated."""
        ...

    def score_options(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """Log-likelihood of each option as the assistant's reply, per conversation
        (constrained scoring: no free-text parsing)."""
        ...


def parse_spec(spec: str) -> tuple[str, str]:
    """Split "kind:model" (a bare model means transformers); hub ids keep their slash."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in BACKEND_KINDS:
        return kind, rest
    return "transformers", spec


BACKEND_KINDS = ("transformers", "openai", "llamacpp")


def get_backend(spec: str, **options) -> Backend:
    """Build the backend a spec string names (see the module docstring)."""
    from econlm.errors import UserError

    kind, model = parse_spec(spec)
    if not model:
        raise UserError(f"backend spec {spec!r} names no model")
    if kind == "transformers":
        from econlm.backends.hf import TransformersBackend

        return TransformersBackend(model, **options)
    if kind == "openai":
        from econlm.backends.openai import OpenAIBackend

        return OpenAIBackend(model, **options)
    from econlm.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(model, **options)
