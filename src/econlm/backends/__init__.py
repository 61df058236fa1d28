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
from typing import Any, Protocol, runtime_checkable

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
    """What evaluation, the app, Q&A, serving and the benchmarks may use of a model, whatever runs it.

    Every backend has every member; one that its engine cannot provide (an OpenAI endpoint cannot
    score plain-text options, a base model has no chat prompt) raises one `UserError` saying so.
    """

    name: str  # the spec it runs, e.g. "transformers:econlm"; recorded in provenance
    model_ref: ModelRef | None  # the local model it runs; None for a remote endpoint
    batch_size: int  # conversations per forward pass (1 where the engine runs one at a time)

    @property
    def has_chat_template(self) -> bool:
        """Whether chat prompts can be rendered; False for base models (use complete / score_text_options)."""
        ...

    @property
    def has_tokenizer(self) -> bool:
        """Whether `count_tokens` and `chat_prompt` work here (False for a remote endpoint)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance of what runs: at least `backend` (the name) and `chat_template`."""
        ...

    def chat_prompt(self, conversation: Messages) -> str:
        """The prompt text the model sees for the assistant's next turn (its chat template applied)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer, special-token strings counted as one each."""
        ...

    def chat(self, conversations: Sequence[Messages], decoding: Decoding = Decoding()) -> list[list[str]]:
        """Assistant replies for a batch of conversations: one list of `num_return_sequences`
        strings per conversation."""
        ...

    def stream_chat(self, conversation: Messages, decoding: Decoding = Decoding()) -> Iterator[str]:
        """The assistant reply for one conversation, yielded piece by piece as it is generated."""
        ...

    def complete(self, prompts: Sequence[str], decoding: Decoding = Decoding(), stop: Sequence[str] = ()) -> list[list[str]]:
        """Plain-text continuations of each prompt (no chat template), each cut before the first
        `stop` string: one list of `num_return_sequences` strings per prompt."""
        ...

    def score_options(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """Log-likelihood of each option as the assistant's reply, per conversation
        (constrained scoring: no free-text parsing)."""
        ...

    def score_text_options(self, prefixes: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Log-likelihood of each option string right after each plain-text prefix (base models)."""
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
