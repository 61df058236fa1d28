"""Training data: chat-template encoding with an answer-only loss mask, the step schedule, batches.

Prompts are rendered exactly as inference renders them (`econlm.backends.hf`): the tokenizer's
chat template over `Example.messages`, then tokenized without extra special tokens. The loss
mask marks the tokens of every assistant reply plus its end-of-turn token (so the model learns
to stop), and nothing else: not the system prompt, the abstract, or the template's markup.

The schedule is a pure function of (seed, step), which is what makes `--resume` exact: the data
position is just the step number.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from econlm.errors import UserError
from econlm.types import Example


@dataclass(frozen=True)
class Encoded:
    """One tokenized example; `label_mask[i]` is True when token i is part of an assistant answer."""

    id: str
    task: str
    input_ids: list[int]
    label_mask: list[bool]
    truncated: bool

    @property
    def n_labels(self) -> int:
        return sum(self.label_mask)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]], tuple[int, int]]:
    """(text, answer spans, span of the first user message's content) as character offsets.

    An answer span runs from the end of the generation prompt before it to the end of its
    end-of-turn token (the whitespace the template puts after that token is not part of it).
    """
    text = _render(tokenizer, messages)
    answers = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (text.startswith(prompt) and text.startswith(through)):
            raise UserError("the tokenizer's chat template does not render conversations prefix by prefix; "
                            "econlm cannot locate the answer tokens for the loss mask")
        answers.append((len(prompt), len(through.rstrip())))
    if not answers:
        raise UserError("an example has no assistant message to learn from")
    user_index = next(i for i, m in enumerate(messages) if m["role"] == "user")
    content_start = text.find(messages[user_index]["content"], len(_render(tokenizer, messages[:user_index])))
    return text, answers, (content_start, content_start + len(messages[user_index]["content"]))


def encode_example(example: Example, tokenizer, max_length: int) -> Encoded:
    """Tokenize with the chat template; mask all but the answers; fit `max_length` by cutting the end
    of the first user message (the abstract or question), never the answer."""
    messages = [m.model_dump() for m in example.messages]
    text, answers, (user_start, user_end) = _char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    starts = [start for start, _ in enc["offset_mapping"]]
    mask = [any(a <= s < b for a, b in answers) for s in starts]
    truncated = False
    overflow = len(ids) - max_length
    if overflow > 0:
        truncated = True
        user_tokens = [i for i, s in enumerate(starts) if user_start <= s < user_end]
        cut = set(user_tokens[-overflow:]) if len(user_tokens) > overflow else set(user_tokens)
        ids = [t for i, t in enumerate(ids) if i not in cut]
        mask = [m for i, m in enumerate(mask) if i not in cut]
        ids, mask = ids[:max_length], mask[:max_length]  # only bites when the prompt alone cannot fit
    return Encoded(example.id, example.task, ids, mask, truncated)


def encode_all(examples: Sequence[Example], tokenizer, max_length: int) -> tuple[list[Encoded], dict[str, int]]:
    """Encode examples; drop those whose answer did not survive truncation. Returns (encoded, counts)."""
    encoded, truncated, dropped = [], 0, 0
    for example in examples:
        item = encode_example(example, tokenizer, max_length)
        truncated += item.truncated
        if item.n_labels == 0:
            dropped += 1
            continue
        encoded.append(item)
    return encoded, {"examples": len(encoded), "truncated": truncated, "dropped_without_answer": dropped}


class Schedule:
    """Which examples each optimizer step trains on, and how they are split into micro-batches.

    One epoch draws each task's examples `weight` times (the fractional part as a seeded sample),
    shuffled with a seed derived from (seed, epoch); consecutive `batch_size` examples form a step.
    Every epoch has the same number of steps, so step -> (epoch, position) is arithmetic.
    """

    def __init__(self, examples: Sequence[Encoded], weights: dict[str, float], batch_size: int,
                 seed: int, epochs: float, max_steps: int | None):
        self.examples = list(examples)
        self.batch_size = batch_size
        self.seed = seed
        self.by_task: dict[str, list[int]] = {}
        for i, item in enumerate(self.examples):
            self.by_task.setdefault(item.task, []).append(i)
        missing = [t for t in weights if t not in self.by_task]
        if missing:
            raise UserError(f"no training examples for task(s) {', '.join(missing)}")
        self.weights = weights
        self.epoch_size = sum(self._draw_count(t) for t in self.by_task)
        self.steps_per_epoch = math.ceil(self.epoch_size / batch_size)
        self.total_steps = max_steps or max(1, math.ceil(epochs * self.steps_per_epoch))
        self._cached_epoch: tuple[int, list[int]] | None = None

    def _draw_count(self, task: str) -> int:
        weight, n = self.weights[task], len(self.by_task[task])
        return int(weight) * n + round((weight - int(weight)) * n)

    def epoch_order(self, epoch: int) -> list[int]:
        if self._cached_epoch and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        rng = random.Random(f"{self.seed}-epoch-{epoch}")
        order: list[int] = []
        for task, indices in self.by_task.items():
            weight = self.weights[task]
            order += indices * int(weight) + rng.sample(indices, round((weight - int(weight)) * len(indices)))
        rng.shuffle(order)
        self._cached_epoch = (epoch, order)
        return order

    def step_examples(self, step: int) -> list[Encoded]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        return [self.examples[i] for i in order[position * self.batch_size: (position + 1) * self.batch_size]]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


def micro_batches(items: Sequence[Encoded], token_budget: int, packed: bool,
                  rank: int = 0, world_size: int = 1) -> list[list[Encoded]]:
    """This process's share of a step, cut into micro-batches that fit `token_budget`.

    Examples are sorted by length first, so a padded micro-batch holds similar lengths and
    wastes little on padding; the budget counts padded tokens (grouped) or real tokens (packed).
    With several processes each takes every world_size-th example of the sorted list, so all
    get work of similar size.
    """
    ordered = sorted(items, key=lambda e: (-len(e.input_ids), e.id))[rank::world_size]
    batches: list[list[Encoded]] = []
    current: list[Encoded] = []
    used = 0
    for item in ordered:
        cost = len(item.input_ids)
        needed = used + cost if packed else (len(current) + 1) * len(current[0].input_ids if current else item.input_ids)
        if current and needed > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(item)
        used += cost
    if current:
        batches.append(current)
    return batches


def collate(items: Sequence[Encoded], packed: bool, pad_id: int) -> dict:
    """Tensors for one micro-batch.

    grouped: right-padded rows with an attention mask.
    packed: one row, no padding, no attention mask; position ids restart at 0 for each example,
    which transformers (`masking_utils.find_packed_sequence_indices`) turns into a block-diagonal
    causal mask, so no example attends to another.
    """
    import torch

    if packed:
        ids = torch.tensor([[t for e in items for t in e.input_ids]])
        positions = torch.tensor([[p for e in items for p in range(len(e.input_ids))]])
        labels = torch.tensor([[m for e in items for m in e.label_mask]])
        return {"input_ids": ids, "position_ids": positions, "label_mask": labels}
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.zeros((len(items), width), dtype=torch.bool)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(e.label_mask)
    return {"input_ids": ids, "attention_mask": attention, "label_mask": labels}


def answer_loss_sum(model, batch: dict):
    """Summed next-token cross-entropy over the answer tokens of a micro-batch.

    Only the positions that predict an answer token go through the output head
    (`logits_to_keep` as a boolean mask): titles and labels are ~5% of the tokens, and the
    49k-wide head is the largest single matrix in a small model, so this skips most of its
    compute and the (tokens x vocabulary) logits tensor.
    """
    import torch
    import torch.nn.functional as F

    label_mask = batch["label_mask"]
    keep = torch.zeros_like(label_mask)
    keep[:, :-1] = label_mask[:, 1:]
    targets = batch["input_ids"][:, 1:][label_mask[:, 1:]]
    inputs = {k: v for k, v in batch.items() if k != "label_mask"}
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")
