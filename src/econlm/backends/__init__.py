"""Generation and scoring backends: one interface for every place econlm runs a model.

Evaluation, the app, Q&A synthesis, serving and the benchmarks all talk to a `Backend`, named by
one spec grammar, ENGINE:MODEL (the same `--model SPEC` option everywhere):

    transformers:<model>   in-process transformers (the default: a bare <model> means this);
                           <model> is anything `econlm.models.ModelRef.parse` accepts (packaged
                           name, folder, .gguf, hub id, adapter/run dir, or "econlm" for the
                           shipped adapter)
    llamacpp:<file.gguf>   llama.cpp in-process through llama-cpp-python (extra `[fast]`); a
                           packaged model name runs its GGUF
    openai:<name>          any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server,
                           Ollama) serving <name>; base URL from $OPENAI_BASE_URL, key from
                           $OPENAI_API_KEY

A spec is parsed once, at the edge, into an `EngineSpec`; a new engine (vllm:) is one more entry
in `ENGINES` and its backend class.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from econlm.errors import UserError
from econlm.models import ModelRef

Messages = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass(frozen=True)
class Decoding:
    """Decoding settings, recorded with every prediction file."""

    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: int = 0
    num_beams: int = 1  # > 1: beam search (greedy over beams; the transformers engine only)
    length_penalty: float = 1.0  # beam search: score = log-prob / length ** length_penalty

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as OpenAI's `logprobs.content` reports it: its text, its log-probability
    under the model (temperature 1, before any sampling setting) and the `top` most likely tokens
    at its position with theirs, most likely first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@runtime_checkable
class Backend(Protocol):
    """What evaluation, the app, Q&A, serving and the benchmarks may use of a model, whatever runs it.

    Every backend has every member; one that its engine cannot provide (an OpenAI endpoint cannot
    score plain-text options, a base model has no chat prompt) raises one `UserError` saying so.
    """

    name: str  # the spec it runs, e.g. "transformers:econlm"; recorded in provenance
    model_ref: ModelRef | None  # the local model it runs; None for a remote endpoint
    # The local model whose training record (econlm.evaluate.training_record) says how to prompt it:
    # model_ref, or for an endpoint the model its server reports serving when that is on this machine.
    source_model: ModelRef | None
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

    def chat_with_logprobs(self, conversation: Messages, decoding: Decoding,
                           top_logprobs: int) -> list[tuple[str, list[TokenLogprob]]]:
        """`num_return_sequences` replies to one conversation, each with its tokens' log-probabilities
        and the `top_logprobs` most likely tokens at each (what a server's `logprobs` answers with)."""
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

    def score_options_and_chat(self, conversations: Sequence[Messages], options: Sequence[str],
                               decoding: Decoding = Decoding()) -> tuple[list[list[float]], list[list[str]]]:
        """`score_options` and `chat` (one reply each) of the same conversations, as classification
        evaluation asks for both; an engine that can keep a prompt's KV cache evaluates it once."""
        ...


class SeparatePasses:
    """`score_options_and_chat` as its two calls, for an engine that keeps no prompt cache between
    scoring and generation (llama.cpp scores on its own context; an endpoint holds its own)."""

    def score_options_and_chat(self, conversations: Sequence[Messages], options: Sequence[str],
                               decoding: Decoding = Decoding()) -> tuple[list[list[float]], list[list[str]]]:
        return self.score_options(conversations, options), self.chat(conversations, decoding)


@dataclass(frozen=True)
class Engine:
    """An engine a spec can name: `local` ones run a `ModelRef` on this machine, the others send
    the model's name to an endpoint; `backend` is the "module:Class" built for it."""

    name: str
    local: bool
    backend: str
    runs_kinds: tuple[str, ...] = ()  # the ModelRef kinds a local engine can run (empty: all)


ENGINES = {
    engine.name: engine
    for engine in (
        Engine("transformers", local=True, backend="econlm.backends.hf:TransformersBackend"),
        Engine("llamacpp", local=True, backend="econlm.backends.llamacpp:LlamaCppBackend", runs_kinds=("gguf", "packaged")),
        Engine("openai", local=False, backend="econlm.backends.openai:OpenAIBackend"),
    )
}
DEFAULT_ENGINE = "transformers"
_ENGINE_PREFIX = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class EngineSpec:
    """ENGINE:MODEL, parsed once: the engine, and the local model (`model`) or the name an
    endpoint serves (`served_name`)."""

    engine: str
    model: ModelRef | None = None
    served_name: str | None = None

    @classmethod
    def of(cls, engine: str, model: ModelRef) -> EngineSpec:
        """A local engine running `model`; a model that engine cannot run is a UserError."""
        spec = ENGINES.get(engine)
        if spec is None or not spec.local:
            raise UserError(f"{engine!r} is not an engine that runs a local model (use {', '.join(_local_engines())})")
        if spec.runs_kinds and model.kind not in spec.runs_kinds:
            raise UserError(f"{engine}:{model}: the {engine} engine runs a .gguf file or a packaged model "
                            "(make one with `econlm export gguf`)")
        return cls(engine, model=model)

    @property
    def model_text(self) -> str:
        return self.model.text if self.model is not None else str(self.served_name)

    def __str__(self) -> str:
        return f"{self.engine}:{self.model_text}"


def _local_engines() -> list[str]:
    return [name for name, engine in ENGINES.items() if engine.local]


def parse_spec(text: str) -> EngineSpec:
    """ENGINE:MODEL (a bare MODEL means transformers:MODEL); hub ids keep their slash. A local
    engine's model is resolved here (`ModelRef.parse`), so a bad one fails before anything loads."""
    text = str(text).strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ENGINES:
        engine = prefix
    elif sep and _ENGINE_PREFIX.fullmatch(prefix) and not Path(text).exists():
        raise UserError(f"unknown engine {prefix!r} in {text!r}: use "
                        f"{', '.join(f'{name}:MODEL' for name in ENGINES)}, or a bare MODEL ({DEFAULT_ENGINE})")
    else:
        engine, rest = DEFAULT_ENGINE, text
    if not rest:
        raise UserError(f"model spec {text!r} names no model")
    if ENGINES[engine].local:
        return EngineSpec.of(engine, ModelRef.parse(rest))
    return EngineSpec(engine, served_name=rest)


def get_backend(spec: EngineSpec | str, **options) -> Backend:
    """Build the backend a spec names (see the module docstring); `options` go to its constructor."""
    import importlib

    if isinstance(spec, str):
        spec = parse_spec(spec)
    module, _, cls = ENGINES[spec.engine].backend.partition(":")
    backend_class = getattr(importlib.import_module(module), cls)
    return backend_class(spec.model if spec.model is not None else spec.served_name, **options)
