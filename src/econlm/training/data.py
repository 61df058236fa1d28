"""Training data: chat-template encoding with an answer-only loss mask, the step schedule, batches.

Prompts are rendered exactly as inference renders them (`econlm.backends.hf`): the tokenizer's
chat template over `Example.messages`, then tokenized without extra special tokens. The loss
mask marks the tokens of every assistant reply plus its end-of-turn token (so the model learns
to stop), and nothing else: not the system prompt, the abstract, or the template's markup.

A sequence may hold several answers (a multi-turn Q&A pair, or the classify-then-title sequence
of one paper), each for its task; the loss of a step averages the answer tokens' cross-entropy by
token, by task or by answer (`step_token_weights`).

The schedule is a pure function of (seed, step), which is what makes `--resume` exact: the data
position is just the step number.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from econlm.errors import UserError
from econlm.types import Example, Paper

LOSS_AVERAGES = ("token", "task", "answer")


@dataclass(frozen=True)
class Conversation:
    """What is encoded: a chat with one or more assistant answers, and the task of each answer."""

    id: str
    task: str  # what the schedule weights: the example's task, or "classify+title" for a joint sequence
    messages: list[dict]
    answer_tasks: tuple[str, ...]  # one per assistant message, in order

    @classmethod
    def of(cls, example: Example) -> "Conversation":
        messages = [m.model_dump() for m in example.messages]
        n_answers = sum(m["role"] == "assistant" for m in messages)
        return cls(example.id, example.task, messages, (example.task,) * n_answers)


def classify_then_title(papers: Sequence[Paper]) -> list[Conversation]:
    """One sequence per paper with both answers (`templates.CLASSIFY_THEN_TITLE`)."""
    from econlm.data.templates import CLASSIFY_THEN_TITLE, classify_then_title_messages

    return [Conversation(f"{CLASSIFY_THEN_TITLE.task}-{p.arxiv_id}", CLASSIFY_THEN_TITLE.task,
                         [m.model_dump() for m in classify_then_title_messages(p)], CLASSIFY_THEN_TITLE.tasks)
            for p in papers]


@dataclass(frozen=True)
class Encoded:
    """One tokenized sequence; `label_mask[i]` is True when token i is part of an assistant answer,
    and `label_answers` says which answer (an index into `answer_tasks`) each such token is part of."""

    id: str
    task: str
    input_ids: list[int]
    label_mask: list[bool]
    truncated: bool
    answer_tasks: tuple[str, ...]
    label_answers: tuple[int, ...]  # one per True in label_mask, in order

    @property
    def n_labels(self) -> int:
        return len(self.label_answers)

    @property
    def label_tasks(self) -> list[str]:
        """The task of each answer token, in order."""
        return [self.answer_tasks[a] for a in self.label_answers]


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


def encode_example(example: Example | Conversation, tokenizer, max_length: int) -> Encoded:
    """Tokenize with the chat template; mask all but the answers; fit `max_length` by cutting the end
    of the first user message (the abstract or question), never the answer."""
    conversation = example if isinstance(example, Conversation) else Conversation.of(example)
    text, answers, (user_start, user_end) = _char_spans(tokenizer, conversation.messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    starts = [start for start, _ in enc["offset_mapping"]]
    answer_of = [next((k for k, (a, b) in enumerate(answers) if a <= s < b), None) for s in starts]
    mask = [k is not None for k in answer_of]
    truncated = False
    overflow = len(ids) - max_length
    if overflow > 0:
        truncated = True
        user_tokens = [i for i, s in enumerate(starts) if user_start <= s < user_end]
        cut = set(user_tokens[-overflow:]) if len(user_tokens) > overflow else set(user_tokens)
        ids = [t for i, t in enumerate(ids) if i not in cut]
        answer_of = [k for i, k in enumerate(answer_of) if i not in cut]
        ids, answer_of = ids[:max_length], answer_of[:max_length]  # only bites when the prompt alone cannot fit
    if answer_of and answer_of[0] is not None:
        raise UserError(f"{conversation.id}: starts with an answer token, which nothing before it predicts")
    return Encoded(conversation.id, conversation.task, ids, [k is not None for k in answer_of], truncated,
                   conversation.answer_tasks, tuple(k for k in answer_of if k is not None))


def encode_all(examples: Sequence[Example | Conversation], tokenizer, max_length: int) -> tuple[list[Encoded], dict[str, int]]:
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


def task_weight(task_weights: dict[str, float] | None, task: str) -> float:
    """A task's loss weight (`train.task_loss_weights`, 1 for a task it does not name)."""
    return (task_weights or {}).get(task, 1.0)


def step_token_weights(items: Sequence[Encoded], average: str,
                       task_weights: dict[str, float] | None = None) -> dict[str, list[float]]:
    """The weight of each answer token of one step's examples (by example id, in token order): the
    step's loss is the weighted sum of their cross-entropies, the weights summing to 1.

    token: every answer token of the step counts the same (classification's few answer tokens get
    a small share of the loss). task: each task's mean token loss, then their mean weighted by
    `task_weights` (default 1 each). answer: each answer's mean token loss counts the same, so a
    one-token label weighs as much as a title (a step may draw the same example twice; each copy
    is an answer of its own, with the same weights).
    """
    def group(position: int, item: Encoded, answer: int):
        if average == "token":
            return "all"
        if average == "task":
            return item.answer_tasks[answer]
        return position, answer

    def weight(key) -> float:
        return task_weight(task_weights, key) if average == "task" else 1.0

    if average not in LOSS_AVERAGES:
        raise UserError(f"unknown loss average {average!r}: choose from {', '.join(LOSS_AVERAGES)}")
    counts: dict = {}
    for position, item in enumerate(items):
        for answer in item.label_answers:
            key = group(position, item, answer)
            counts[key] = counts.get(key, 0) + 1
    total = sum(weight(key) for key in counts)
    weights = {}
    for position, item in enumerate(items):
        keys = [group(position, item, answer) for answer in item.label_answers]
        weights[item.id] = [weight(key) / (counts[key] * total) for key in keys]
    return weights


def answer_token_losses(model, batch: dict):
    """Next-token cross-entropy of each answer token of a micro-batch, in the order of
    `collate`'s items and, within each, of its tokens.

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
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="none")
