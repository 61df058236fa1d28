"""In-process transformers backend: batched generation and constrained scoring.

Chat models get their prompts from the tokenizer's chat template, built exactly as training
builds them (`apply_chat_template` text, then tokenized without extra special tokens), so a scored
option is tokenized as the assistant reply plus the template's end-of-turn. Base models without a
chat template (Gemma-3-270M) use the completion-style `complete` / `score_text_options`.

Batches are LEFT-padded with position ids taken from the attention mask, so padding does not
change any result. Constrained scoring runs each prompt once, keeps its KV cache, and scores all
options in one more pass over the repeated cache (the prompt is ~100x longer than an option);
`score_options_and_chat` generates the free reply from that same cache.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from econlm.backends import Decoding, Messages, TokenLogprob
from econlm.errors import UserError
from econlm.models import ModelRef, load_model


class TransformersBackend:
    """A causal LM (base model, hub id, or base + LoRA adapter) loaded with transformers."""

    def __init__(
        self,
        model_ref: ModelRef,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int = 16,
        progress: bool = False,
        n_threads: int | None = None,
    ):
        """n_threads: CPU threads torch computes with (default: torch's own, one per core); torch has
        one thread pool per process, so only the process that owns the model (a server) sets it."""
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if n_threads is not None:
            import torch

            torch.set_num_threads(n_threads)
        self.model_ref = model_ref
        self.source_model = model_ref
        self.name = f"transformers:{model_ref}"
        self.dtype = dtype
        self.batch_size = batch_size
        self.progress = progress
        self.model, self.tokenizer = load_model(model_ref, dtype=dtype, device=device)
        self.device = self.model.device
        # transformers 5 renamed the forward's `past_key_values` to `cache`; accept both.
        base_forward = inspect.signature(type(self._base_model()).forward).parameters
        self._cache_arg = "cache" if "cache" in base_forward else "past_key_values"

    # ------------------------------------------------------------------ description

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def describe(self) -> dict[str, Any]:
        """Provenance: the model reference's description (kind, content hashes, base), dtype and device."""
        return {
            "backend": self.name,
            **self.model_ref.describe(),
            "dtype": self.dtype,
            "device": str(self.device),
            "chat_template": self.has_chat_template,
        }

    # ------------------------------------------------------------------ prompts

    def _require_chat_template(self) -> None:
        if not self.has_chat_template:
            raise UserError(
                f"{self.model_ref}: the tokenizer has no chat template (a base model); "
                "use completion-style prompts (complete / score_text_options) instead"
            )

    def chat_prompt(self, conversation: Messages) -> str:
        """The prompt text for the assistant's next turn, as training renders it."""
        self._require_chat_template()
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in conversation], tokenize=False, add_generation_prompt=True
        )

    has_tokenizer = True

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
        return [self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]

    def _continuation_ids(self, prompt_text: str, full_text: str, prompt_ids: list[int], add_special_tokens: bool) -> list[int]:
        """Tokens of full_text after the prompt; the full text is tokenized whole, as in training."""
        full_ids = self._encode([full_text], add_special_tokens)[0]
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return full_ids[len(prompt_ids):]
        # A token merged across the boundary: fall back to tokenizing the continuation alone.
        return self._encode([full_text[len(prompt_text):]], False)[0]

    # ------------------------------------------------------------------ batching helpers

    def _batches(self, lengths: Sequence[int], desc: str) -> Iterator[list[int]]:
        """Indices grouped into batches of similar length (longest first), with a progress bar."""
        from tqdm.auto import tqdm

        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        bar = tqdm(total=len(lengths), desc=desc, unit="ex", disable=not self.progress or len(batches) < 2)
        for batch in batches:
            yield batch
            bar.update(len(batch))
        bar.close()

    def _left_pad(self, sequences: Sequence[list[int]]):
        """(input_ids, attention_mask, position_ids) with left padding; positions skip the padding."""
        import torch

        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq:
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _base_model(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    # ------------------------------------------------------------------ generation

    def chat(self, conversations: Sequence[Messages], decoding: Decoding = Decoding()) -> list[list[str]]:
        """Assistant replies, batched with left padding; only the new tokens are decoded."""
        prompts = [self.chat_prompt(c) for c in conversations]
        return self._generate(self._encode(prompts, add_special_tokens=False), decoding, stop=())

    def complete(self, prompts: Sequence[str], decoding: Decoding = Decoding(), stop: Sequence[str] = ()) -> list[list[str]]:
        """Plain-text continuations of each prompt (base models); each cut at the first `stop` string."""
        return self._generate(self._encode(prompts, add_special_tokens=True), decoding, stop=tuple(stop))

    def _generation_kwargs(self, decoding: Decoding, stop: tuple[str, ...]) -> dict[str, Any]:
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=not decoding.greedy,
            temperature=decoding.temperature if not decoding.greedy else None,
            top_p=decoding.top_p if not decoding.greedy else None,
            top_k=None,
            num_return_sequences=decoding.num_return_sequences,
            num_beams=decoding.num_beams,
            length_penalty=decoding.length_penalty if decoding.num_beams > 1 else None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=list(stop) or None,
        )
        kwargs: dict[str, Any] = {"generation_config": config}
        if stop:
            kwargs["tokenizer"] = self.tokenizer  # generate() needs it to match stop strings
        return kwargs

    def _generate(self, encoded: list[list[int]], decoding: Decoding, stop: tuple[str, ...]) -> list[list[str]]:
        import torch

        if not encoded:
            return []
        kwargs = self._generation_kwargs(decoding, stop)
        if not decoding.greedy:
            torch.manual_seed(decoding.seed)
        n = decoding.num_return_sequences
        results: list[list[str]] = [[] for _ in encoded]
        for batch in self._batches([len(e) for e in encoded], "generate"):
            ids, mask, _ = self._left_pad([encoded[i] for i in batch])
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
            for k, i in enumerate(batch):
                results[i] = [_cut(t, stop) for t in texts[k * n: (k + 1) * n]]
        return results

    def chat_with_logprobs(self, conversation: Messages, decoding: Decoding,
                           top_logprobs: int) -> list[tuple[str, list[TokenLogprob]]]:
        """Replies with the log-softmax of each step's raw logits (generate's `output_logits`, which
        holds one vocabulary-sized row per generated token until the call returns)."""
        import torch

        if decoding.num_beams != 1:
            raise UserError("log-probabilities are given for greedy or sampled replies, not for beam search")
        ids, mask, _ = self._left_pad(self._encode([self.chat_prompt(conversation)], add_special_tokens=False))
        if not decoding.greedy:
            torch.manual_seed(decoding.seed)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, output_logits=True,
                                      return_dict_in_generate=True, **self._generation_kwargs(decoding, ()))
        new_ids = out.sequences[:, ids.shape[1]:].tolist()
        eos, special = self.tokenizer.eos_token_id, set(self.tokenizer.all_special_ids)
        lengths = [row.index(eos) if eos in row else len(row) for row in new_ids]  # padding follows the end
        tokens: list[list[TokenLogprob]] = [[] for _ in new_ids]
        for step, logits in enumerate(out.logits):
            logprobs = logits.float().log_softmax(-1)
            top_values, top_ids = logprobs.topk(top_logprobs, dim=-1)
            for row, reply_ids in enumerate(new_ids):
                token_id = reply_ids[step]
                if step >= lengths[row] or token_id in special:  # as the reply's text, which skips special tokens
                    continue
                top = tuple(zip(map(self._token_text, top_ids[row].tolist()), top_values[row].tolist()))
                tokens[row].append(TokenLogprob(self._token_text(token_id), logprobs[row, token_id].item(), top))
        return [(self.tokenizer.decode(row, skip_special_tokens=True), row_tokens)
                for row, row_tokens in zip(new_ids, tokens)]

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def stream_chat(self, conversation: Messages, decoding: Decoding = Decoding()) -> Iterator[str]:
        """The reply for one conversation, piece by piece (generate runs in a worker thread)."""
        import torch
        from transformers import TextIteratorStreamer

        ids, mask, _ = self._left_pad(self._encode([self.chat_prompt(conversation)], add_special_tokens=False))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generation_kwargs(dataclasses.replace(decoding, num_return_sequences=1), ())
        if not decoding.greedy:
            torch.manual_seed(decoding.seed)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=ids, attention_mask=mask, streamer=streamer, **kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if failure:
            raise failure[0]

    # ------------------------------------------------------------------ constrained scoring

    def score_options(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        """Sum log-prob of each option as the assistant reply (option + end-of-turn token)."""
        return self._score(*self._option_rows(conversations, options))[0]

    def score_options_and_chat(self, conversations: Sequence[Messages], options: Sequence[str],
                               decoding: Decoding = Decoding()) -> tuple[list[list[float]], list[list[str]]]:
        """`score_options` and `chat` with each prompt evaluated once: the reply is generated from
        the scoring pass's KV cache (the prompt is most of the work of both)."""
        if decoding.num_return_sequences != 1 or decoding.num_beams != 1:
            raise ValueError("score_options_and_chat generates one reply per conversation, without beams")
        return self._score(*self._option_rows(conversations, options), generation=decoding)

    def _option_rows(self, conversations: Sequence[Messages], options: Sequence[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Each conversation's prompt tokens, and each option's reply tokens after it."""
        prompts, continuations = [], []
        for conversation in conversations:
            prompt_text = self.chat_prompt(conversation)
            prompt_ids = self._encode([prompt_text], add_special_tokens=False)[0]
            rows = []
            for option in options:
                full_text = self.tokenizer.apply_chat_template(
                    [*(dict(m) for m in conversation), {"role": "assistant", "content": option}], tokenize=False
                )
                if not full_text.startswith(prompt_text):
                    raise UserError(f"{self.model_ref}: the chat template renders the prompt differently with a reply")
                # As in training (econlm.training.data): the answer runs through its end-of-turn
                # token; the whitespace the template puts after that token is not part of it.
                full_text = full_text.rstrip()
                rows.append(self._continuation_ids(prompt_text, full_text, prompt_ids, add_special_tokens=False))
            prompts.append(prompt_ids)
            continuations.append(rows)
        return prompts, continuations

    def score_text_options(self, prefixes: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Sum log-prob of each option string right after each plain-text prefix (base models)."""
        prompts, continuations = [], []
        for prefix in prefixes:
            prompt_ids = self._encode([prefix], add_special_tokens=True)[0]
            continuations.append(
                [self._continuation_ids(prefix, prefix + option, prompt_ids, add_special_tokens=True) for option in options]
            )
            prompts.append(prompt_ids)
        return self._score(prompts, continuations)[0]

    def _score(self, prompts: list[list[int]], continuations: list[list[list[int]]],
               generation: Decoding | None = None) -> tuple[list[list[float]], list[list[str]]]:
        """One pass over each batch of prompts, then one over all their options on the shared cache;
        with `generation`, also each prompt's reply, generated from a copy of that cache."""
        import torch

        results: list[list[float]] = [[] for _ in prompts]
        replies: list[list[str]] = [[] for _ in prompts] if generation is not None else []
        if not prompts:
            return results, replies
        if generation is not None and not generation.greedy:
            torch.manual_seed(generation.seed)
        n_options = len(continuations[0])
        for batch in self._batches([len(p) for p in prompts], "score"):
            ids, mask, positions = self._left_pad([prompts[i] for i in batch])
            with torch.inference_mode():
                out = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
                )
                first_logprobs = out.logits[:, -1].float().log_softmax(-1).repeat_interleave(n_options, 0)
                cache = out.cache if hasattr(out, "cache") else out.past_key_values
                if generation is not None:
                    texts = self._generate_from_cache(ids, mask, cache, generation)
                    for k, i in enumerate(batch):
                        replies[i] = [texts[k]]
                cache.batch_repeat_interleave(n_options)

                # Options right-padded: padding after the real tokens cannot affect them.
                option_rows = [continuations[i][j] for i in batch for j in range(n_options)]
                width = max(len(r) for r in option_rows)
                opt_ids = torch.full((len(option_rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
                opt_mask = torch.zeros_like(opt_ids)
                for row, tokens in enumerate(option_rows):
                    opt_ids[row, : len(tokens)] = torch.tensor(tokens)
                    opt_mask[row, : len(tokens)] = 1
                opt_ids, opt_mask = opt_ids.to(self.device), opt_mask.to(self.device)
                prompt_lengths = mask.sum(-1).repeat_interleave(n_options, 0)
                opt_positions = prompt_lengths[:, None] + torch.arange(width, device=self.device)[None, :]
                full_mask = torch.cat([mask.repeat_interleave(n_options, 0), opt_mask], dim=1)
                out = self.model(
                    input_ids=opt_ids,
                    attention_mask=full_mask,
                    position_ids=opt_positions,
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
                # Token t of an option is predicted by the prompt's last logit (t=0) or option logit t-1.
                logprobs = torch.cat([first_logprobs[:, None], out.logits[:, :-1].float().log_softmax(-1)], dim=1)
                token_logprobs = logprobs.gather(-1, opt_ids[:, :, None]).squeeze(-1) * opt_mask
                sums = token_logprobs.sum(-1).tolist()
            for k, i in enumerate(batch):
                results[i] = sums[k * n_options: (k + 1) * n_options]
        return results, replies

    def _generate_from_cache(self, ids, mask, prompt_cache, decoding: Decoding) -> list[str]:
        """Replies to a left-padded prompt batch whose KV cache is already computed. generate()
        resumes from a cache only with input left to run, so it gets a copy cropped by the last
        position and computes that one token again."""
        cache = copy.deepcopy(prompt_cache)
        cache.crop(-1)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **{self._cache_arg: cache},
                                  **self._generation_kwargs(decoding, ()))
        return self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def _cut(text: str, stop: tuple[str, ...]) -> str:
    """Text up to the first stop string (generate stops *after* matching one)."""
    for s in stop:
        index = text.find(s)
        if index >= 0:
            text = text[:index]
    return text
