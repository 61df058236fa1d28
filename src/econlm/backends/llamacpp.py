"""llama.cpp backend: a GGUF file run in-process through llama-cpp-python (extra `[fast]`).

Several times faster than transformers on a CPU (`econlm bench infer`). Prompts are rendered from
the chat template stored in the GGUF (what `econlm export gguf` writes from the training
tokenizer) with llama-cpp-python's Jinja2 formatter, and tokenized by llama.cpp, so a prompt is
the same token sequence transformers sees. Constrained scoring follows `TransformersBackend`: an
option is scored as the assistant reply through the template's end-of-turn token.

One `Llama` object is not thread-safe: every call holds the backend's lock. Scoring uses a second
context over the same (memory-mapped) file that keeps the logits of every position
(`logits_all=True`); it is created on the first `score_options` call, so generation-only use
(the server, Q&A synthesis) does not pay for the per-position logits. That context keeps what it
evaluated: each prompt + option runs on top of the longest token prefix it already holds, so a
prompt is evaluated once for all its options and the worked examples that consecutive few-shot
prompts share once for all of them (`scoring_evaluated_tokens` counts what was evaluated).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from econlm.backends import Decoding, Messages, SeparatePasses, TokenLogprob
from econlm.errors import MissingExtraError, UserError
from econlm.models import ModelRef

DEFAULT_N_CTX = 4096  # KV-cache size cap; the model's own context length when smaller
# llama.cpp's CPU matrix kernels are not batch-invariant: the rows of a batch left over from groups
# of 4, and batches of a few rows, take other kernels whose results differ in the last bits, and a
# position's keys and values carry that into every later position (up to 0.07 nats in a summed
# option log-prob of Qwen2.5-Coder-0.5B Q4_K_M, resuming at position 377 or with 4 rows left).
# Resuming on a multiple of ROW_GROUP with at least MIN_RESUMED_ROWS rows to evaluate gives every
# position the kernel one pass over the whole sequence gives it: a fresh context's scores, bit for
# bit (measured on this project's CPU by scripts/bench_llamacpp_scoring.py, which reports the
# largest difference).
ROW_GROUP = 4
MIN_RESUMED_ROWS = 8


def _source_hash(description: str) -> str | None:
    """The source model's content hash from an `econlm export gguf` description (None for other GGUFs)."""
    found = re.search(r"content hash ([\w:./-]+)\)", description)
    return found.group(1) if found else None


def _import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError("llama-cpp-python", "fast", "the llama.cpp backend") from None
    return llama_cpp


class LlamaCppBackend(SeparatePasses):
    """Generation and scoring with llama.cpp over one GGUF file."""

    def __init__(self, model_ref: ModelRef, n_ctx: int | None = None, n_threads: int | None = None, progress: bool = False):
        llama_cpp = _import_llama_cpp()
        path = model_ref.gguf_file()
        self.path = path
        self.model_ref = model_ref
        self.source_model = model_ref
        self.name = f"llamacpp:{model_ref}"
        self.batch_size = 1  # llama.cpp runs one sequence at a time here
        self.progress = progress
        # All cores, as `econlm bench infer` measures (llama-cpp-python's default is half of them).
        self._options = {"n_threads": n_threads or os.cpu_count(), "verbose": False}
        try:
            # The vocabulary alone (fast) tells the trained context length the KV cache is sized by.
            self.metadata: dict[str, str] = dict(llama_cpp.Llama(str(path), vocab_only=True, verbose=False).metadata)
        except ValueError as exc:
            raise UserError(f"{path}: llama.cpp cannot load it ({exc})") from None
        trained_ctx = int(self.metadata.get(f"{self.metadata.get('general.architecture')}.context_length", DEFAULT_N_CTX))
        self.n_ctx = min(n_ctx or DEFAULT_N_CTX, trained_ctx)
        self.llm = llama_cpp.Llama(str(path), n_ctx=self.n_ctx, **self._options)
        self._scorer = None
        # Tokens the scoring context has evaluated: the load-independent cost of constrained scoring.
        self.scoring_evaluated_tokens = 0
        self._lock = threading.Lock()
        self.chat_template = self.metadata.get("tokenizer.chat_template")
        self.eos_id = self.llm.token_eos()
        self.bos_id = self.llm.token_bos()

    # ------------------------------------------------------------------ description

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def describe(self) -> dict[str, Any]:
        """Provenance: the GGUF's description (its file sha256 as `source_sha256`; no safetensors
        `hash`, llama.cpp never converts the file) and the model it was exported from."""
        return {
            "backend": self.name,
            **self.model_ref.describe(content_hash=False),
            # `econlm export gguf` records the content hash of the model it converted (pairs the runs in a report)
            "exported_from_hash": _source_hash(self.metadata.get("general.description", "")),
            "file_type": self.metadata.get("general.file_type"),
            "n_ctx": self.n_ctx,
            "chat_template": self.has_chat_template,
            "llama_cpp_python": _import_llama_cpp().__version__,
        }

    # ------------------------------------------------------------------ prompts and tokens

    def _token_text(self, token_id: int) -> str:
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    def _render(self, conversation: Messages, add_generation_prompt: bool) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.has_chat_template:
            raise UserError(f"{self.path}: the GGUF has no chat template (a base model); use complete / score_text_options")
        formatter = Jinja2ChatFormatter(
            template=self.chat_template,
            eos_token=self._token_text(self.eos_id),
            bos_token=self._token_text(self.bos_id) if self.bos_id >= 0 else "",
            add_generation_prompt=add_generation_prompt,
        )
        return formatter(messages=[dict(m) for m in conversation]).prompt

    def chat_prompt(self, conversation: Messages) -> str:
        """The prompt text for the assistant's next turn (same template as training)."""
        return self._render(conversation, add_generation_prompt=True)

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. <|im_start|>) count as specials."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    has_tokenizer = True

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def _check_fits(self, n_prompt: int, max_new_tokens: int) -> None:
        if n_prompt + max_new_tokens > self.n_ctx:
            raise UserError(
                f"prompt of {n_prompt} tokens + {max_new_tokens} new tokens exceeds the context of {self.n_ctx} tokens"
            )

    # ------------------------------------------------------------------ generation

    def _sampling(self, decoding: Decoding, seed_offset: int = 0) -> dict[str, Any]:
        """llama.cpp sampling equal to transformers': greedy at temperature 0, else temperature +
        top-p only (llama.cpp's default top-k 40 / min-p 0.05 switched off)."""
        return {
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "seed": decoding.seed + seed_offset,
        }

    def _complete_ids(self, prompt_ids: list[int], decoding: Decoding, stop: Sequence[str] = ()) -> list[str]:
        self._check_fits(len(prompt_ids), decoding.max_new_tokens)
        replies = []
        with self._lock:
            for k in range(decoding.num_return_sequences):
                out = self.llm.create_completion(
                    prompt_ids, max_tokens=decoding.max_new_tokens, stop=list(stop) or None, **self._sampling(decoding, k)
                )
                replies.append(out["choices"][0]["text"])
        return replies

    def chat(self, conversations: Sequence[Messages], decoding: Decoding = Decoding()) -> list[list[str]]:
        """Assistant replies, one conversation after another (llama.cpp reuses a shared prompt
        prefix, e.g. the system prompt, from the previous call)."""
        from tqdm.auto import tqdm

        return [
            self._complete_ids(self.tokenize(self.chat_prompt(c)), decoding)
            for c in tqdm(conversations, desc="generate", unit="ex", disable=not self.progress or len(conversations) < 2)
        ]

    def chat_with_logprobs(self, conversation: Messages, decoding: Decoding,
                           top_logprobs: int) -> list[tuple[str, list[TokenLogprob]]]:
        """Replies generated on the scoring context: llama.cpp reports log-probabilities only from
        a context that keeps the logits of every position."""
        prompt_ids = self.tokenize(self.chat_prompt(conversation))
        self._check_fits(len(prompt_ids), decoding.max_new_tokens)
        replies = []
        with self._lock:
            scorer = self._scoring_context()
            for k in range(decoding.num_return_sequences):
                choice = scorer.create_completion(prompt_ids, max_tokens=decoding.max_new_tokens, logprobs=top_logprobs,
                                                  **self._sampling(decoding, k))["choices"][0]
                found = choice["logprobs"]
                # Each position's top tokens come most likely first, then the chosen one if it is not
                # among them; the log-probabilities are numpy floats.
                tokens = [TokenLogprob(token, float(logprob), tuple((alt, float(lp)) for alt, lp in top.items())[:top_logprobs])
                          for token, logprob, top in zip(found["tokens"], found["token_logprobs"], found["top_logprobs"])]
                replies.append((choice["text"], tokens))
        return replies

    def complete(self, prompts: Sequence[str], decoding: Decoding = Decoding(), stop: Sequence[str] = ()) -> list[list[str]]:
        """Plain-text continuations (base models), each cut before the first `stop` string."""
        return [self._complete_ids(self.tokenize(p, add_special=True), decoding, stop) for p in prompts]

    def stream_chat(self, conversation: Messages, decoding: Decoding = Decoding()) -> Iterator[str]:
        """The reply for one conversation, piece by piece; the lock is held until it ends."""
        prompt_ids = self.tokenize(self.chat_prompt(conversation))
        self._check_fits(len(prompt_ids), decoding.max_new_tokens)
        with self._lock:
            for chunk in self.llm.create_completion(
                prompt_ids, max_tokens=decoding.max_new_tokens, stream=True, **self._sampling(decoding)
            ):
                piece = chunk["choices"][0]["text"]
                if piece:
                    yield piece

    # ------------------------------------------------------------------ constrained scoring

    def _scoring_context(self):
        if self._scorer is None:
            self._scorer = _import_llama_cpp().Llama(str(self.path), n_ctx=self.n_ctx, logits_all=True, **self._options)
        return self._scorer

    def score_options(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """Sum log-prob of each option as the assistant reply (option + end-of-turn token)."""
        rows = []
        for conversation in conversations:
            prompt_text = self.chat_prompt(conversation)
            continuations = []
            for option in options:
                full_text = self._render([*conversation, {"role": "assistant", "content": option}], add_generation_prompt=False)
                if not full_text.startswith(prompt_text):
                    raise UserError(f"{self.path}: the chat template renders the prompt differently with a reply")
                # As in training: the answer runs through its end-of-turn token, not the whitespace after it.
                continuations.append(full_text.rstrip()[len(prompt_text):])
            rows.append((prompt_text, continuations))
        return self._score(rows, add_special=False)

    def score_text_options(self, prefixes: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Sum log-prob of each option string right after each plain-text prefix (base models)."""
        return self._score([(prefix, list(options)) for prefix in prefixes], add_special=True)

    def _score(self, rows: list[tuple[str, list[str]]], add_special: bool) -> list[list[float]]:
        """Sum log-prob of each continuation after its prompt, each prompt + continuation evaluated
        on top of what the scoring context already holds (`_evaluate`)."""
        import numpy as np
        from tqdm.auto import tqdm

        results = []
        with self._lock:
            scorer = self._scoring_context()
            for prompt_text, continuations in tqdm(rows, desc="score", unit="ex", disable=not self.progress or len(rows) < 2):
                prompt_ids = self.tokenize(prompt_text, add_special=add_special)
                sums = []
                for text in continuations:
                    option_ids = self._option_ids(prompt_text, text, prompt_ids, add_special)
                    self._check_fits(len(prompt_ids), len(option_ids))
                    # The option's last token is only predicted, never used to predict: it needs no evaluation.
                    self._evaluate(scorer, prompt_ids + option_ids[:-1])
                    # Token t of the option is predicted by position len(prompt) - 1 + t.
                    logits = np.asarray(scorer.scores[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(option_ids)], dtype=np.float64)
                    logprobs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
                    sums.append(float(logprobs[np.arange(len(option_ids)), option_ids].sum()))
                results.append(sums)
        return results

    def _evaluate(self, scorer, token_ids: list[int]) -> None:
        """Make `scorer` hold the logits of every position of `token_ids`, evaluating only what
        follows the longest prefix it already holds (llama.cpp keeps that prefix's KV cache, and
        its logits rows stay in `scorer.scores`). The cache is cut back to the prefix first; a
        context that cannot be cut there (a recurrent model's state, a sliding-window cache that
        dropped early positions) starts again from nothing. The kept prefix ends on a multiple of
        ROW_GROUP at least MIN_RESUMED_ROWS before the end, so the scores are those of a fresh
        context whatever this one held before."""
        llama_cpp = _import_llama_cpp()
        held = scorer.input_ids[: scorer.n_tokens].tolist()
        if held == token_ids:
            return
        reusable = min(llama_cpp.Llama.longest_token_prefix(held, token_ids), len(token_ids) - MIN_RESUMED_ROWS)
        keep = max(reusable, 0) // ROW_GROUP * ROW_GROUP
        memory = llama_cpp.llama_get_memory(scorer.ctx)
        if keep == 0 or not llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1) \
                or llama_cpp.llama_memory_seq_pos_min(memory, 0) > 0:
            scorer.reset()
            keep = 0
        scorer.n_tokens = keep
        scorer.eval(token_ids[keep:])
        self.scoring_evaluated_tokens += len(token_ids) - keep

    def _option_ids(self, prompt_text: str, continuation: str, prompt_ids: list[int], add_special: bool) -> list[int]:
        """Tokens after the prompt when prompt + continuation is tokenized whole (as in training);
        the continuation alone if a token merges across the boundary."""
        full_ids = self.tokenize(prompt_text + continuation, add_special=add_special)
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return full_ids[len(prompt_ids):]
        return self.tokenize(continuation)
