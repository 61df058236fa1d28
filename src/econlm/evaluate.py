"""Evaluate a language model on title generation or classification, the study's Tables 1 and 2.

Writes OUT/predictions.jsonl (id, input, reference, prediction, plus per-task details),
OUT/metrics.json (a `MetricReport` with full provenance) and, for classification,
OUT/confusion_matrix.png.

Three ways of prompting, chosen by `prompting`:
- "zero-shot": the model's chat template with the training prompt templates of
  `econlm.data.templates` (the fine-tuned adapter, and the base model zero-shot: the conference
  abstract's "LLaMA-2 (base)" row).
- "one-shot": a plain-text completion prompt with one worked example from the train split, for
  base models without a chat template (Gemma-3-270M here; the conference abstract's GPT-Neo and
  OPT rows).
- "few-shot": the published paper's baseline protocol: worked examples from the train split
  before the query (5 for titles; one per category for classification, as its GPT few-shot rows),
  as earlier chat turns of the training template where the model has a chat template, else in the
  completion prompt.

Titles are generated in batches and cut at the first line. Classification never parses free
text for its score: it compares the log-likelihood of the three answers (constrained scoring);
the free-generation parse rate is reported beside it, to show how often the model would have
produced a usable answer unprompted.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from econlm import provenance
from econlm.backends import Backend, Decoding, EngineSpec, Messages, get_backend
from econlm.data.corpus import load_papers, split_files
from econlm.data.templates import (ANSWER_TO_LABEL, CLASSIFY, CLASSIFY_THEN_TITLE, LABEL_TO_ANSWER, ONE_SHOT_CLASSIFY,
                                   ONE_SHOT_TITLE, TITLE)
from econlm.errors import UserError
from econlm.io import atomic_dir, atomic_write_json, write_jsonl
from econlm.metrics import classification_report, plot_confusion_matrix, title_report
from econlm.models import ModelRef
from econlm.types import CATEGORIES, SPLITS, LMClassifyPrediction, MetricReport, Paper, TitlePrediction

EVAL_TASKS = ("title", "classify")
PROMPTINGS = ("auto", "zero-shot", "one-shot", "few-shot")
FEW_SHOTS = {"title": 5, "classify": 3}  # the published paper's 5-shot titles; one example per category
LABELS = list(CATEGORIES)  # econ.EM, econ.GN, econ.TH: the row/column order of every confusion matrix
ANSWERS = [LABEL_TO_ANSWER[label] for label in LABELS]
TITLE_DECODING = Decoding(max_new_tokens=40)  # test titles are at most 34 tokens (SmolLM2 and Gemma tokenizers)
# Room for a short sentence around the answer ("The paper belongs to the Econometrics category").
FREE_GENERATION_DECODING = Decoding(max_new_tokens=16)


def check_task(task: str) -> str:
    if task not in EVAL_TASKS:
        raise UserError(f"unknown task {task!r}: choose from {', '.join(EVAL_TASKS)}")
    return task


def load_split(corpus_dir: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[Paper]:
    """The split's papers; with `limit`, a seeded random subset kept in corpus order."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    papers = load_papers(split_files(corpus_dir)[split]).papers
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        if limit < len(papers):
            keep = sorted(random.Random(seed).sample(range(len(papers)), limit))
            papers = [papers[i] for i in keep]
    return papers


ONE_SHOT_MAX_WORDS = 100  # short worked examples keep one- and few-shot prompts (and CPU time) small


def _short(papers: list[Paper], at_least: int) -> list[Paper]:
    """The papers with short abstracts, or all of them where fewer than `at_least` are short."""
    short = [p for p in papers if len(p.abstract.split()) <= ONE_SHOT_MAX_WORDS]
    return short if len(short) >= at_least else papers


def one_shot_example(corpus_dir: str | Path, seed: int) -> Paper:
    """The worked example of one-shot prompts: a seeded choice among the short train abstracts."""
    train = load_papers(split_files(corpus_dir)["train"]).papers
    return random.Random(f"one-shot-{seed}").choice(_short(train, 1))


def few_shot_examples(corpus_dir: str | Path, task: str, shots: int, seed: int) -> list[Paper]:
    """Seeded worked examples among the short train abstracts; for classification drawn round-robin
    over the categories, so three shots are one per category."""
    rng = random.Random(f"few-shot-{task}-{seed}")
    train = load_papers(split_files(corpus_dir)["train"]).papers
    if task == "title":
        pool = _short(train, shots)
        return rng.sample(pool, min(shots, len(pool)))
    per_label = -(-shots // len(LABELS))
    pools = {label: _short([p for p in train if p.primary_category == label], per_label) for label in LABELS}
    pools = {label: rng.sample(pool, min(per_label, len(pool))) for label, pool in pools.items()}
    picked = [pools[LABELS[i % len(LABELS)]][i // len(LABELS)] for i in range(shots)
              if i // len(LABELS) < len(pools[LABELS[i % len(LABELS)]])]
    return rng.sample(picked, len(picked))  # no fixed label order before the query


def _answer(task: str, paper: Paper) -> str:
    return paper.title if task == "title" else LABEL_TO_ANSWER[paper.primary_category]


def first_line(text: str) -> str:
    """The generated title: the first non-empty line, stripped."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def parse_category(text: str) -> str | None:
    """The label whose category name occurs in the first line of free text, if exactly one does."""
    line = re.sub(r"[^a-z ]+", " ", first_line(text).lower())
    found = [ANSWER_TO_LABEL[answer] for answer in ANSWERS if answer.lower() in " ".join(line.split())]
    return found[0] if len(found) == 1 else None


# The GGUF metadata key under which `econlm export gguf` stores the model's `training_record`
# (a JSON string), so that a llama.cpp run of the file is prompted as its training run was.
TRAINING_GGUF_KEY = "econlm.training_run"


def training_record(model: ModelRef | None) -> dict[str, Any] | None:
    """What the `econlm train` run a model comes from says about itself (templates, data hashes):
    from an adapter's econlm_run.json, the copy `econlm merge` keeps in econlm_merged.json, or the
    copy a GGUF from `econlm export gguf` carries in its metadata. None for other models and for
    remote endpoints (no local model)."""
    if model is None:
        return None
    if model.kind == "gguf":
        return _gguf_training_record(model.path)
    run = _run_record(model)
    if run is None:
        return None
    return {key: run.get(key) for key in ("created", "templates", "seed", "base_model_hash", "chat_template_sha256")} | {
        "corpus_sha256": run.get("data", {}).get("corpus_sha256")}


def _run_record(model: ModelRef) -> dict[str, Any] | None:
    """The econlm_run.json of an adapter, or of the run a merged folder was made from."""
    if model.kind == "adapter" and (model.path / "econlm_run.json").is_file():
        return json.loads((model.path / "econlm_run.json").read_text(encoding="utf-8"))
    if model.kind == "hf-folder" and (model.path / "econlm_merged.json").is_file():
        return json.loads((model.path / "econlm_merged.json").read_text(encoding="utf-8"))["run"]
    return None


def _gguf_training_record(path: Path) -> dict[str, Any] | None:
    """The record from the file's metadata; gguf's reader maps the file and reads its key-value
    pairs without loading the weights."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(TRAINING_GGUF_KEY)
    return json.loads(field.contents()) if field is not None else None


def trained_jointly(training: dict[str, Any] | None, task: str) -> bool:
    """Whether a run (`training_record`) learned `task` inside classify-then-title sequences, so it
    must be asked that way: the category turn first, then the title turn."""
    return bool(training) and training.get("templates", {}).get(task) == CLASSIFY_THEN_TITLE.id


def resolve_prompting(prompting: str, backend) -> str:
    if prompting not in PROMPTINGS:
        raise UserError(f"unknown prompting {prompting!r}: choose from {', '.join(PROMPTINGS)}")
    if prompting == "auto":
        return "zero-shot" if backend.has_chat_template else "one-shot"
    if prompting == "zero-shot" and not backend.has_chat_template:
        raise UserError(f"{backend.model_ref}: no chat template, so no zero-shot chat prompting; use --prompting one-shot")
    return prompting


def load_backend(spec: EngineSpec, batch_size: int = 16, dtype: str = "float32") -> Backend:
    """The backend an evaluation runs on: transformers (batches of `batch_size`, `dtype`),
    llama.cpp (both score options from the model's own log-probabilities), or an OpenAI-compatible
    endpoint such as vLLM (`batch_size` requests in flight, options scored from its `logprobs`)."""
    if spec.engine == "transformers":
        return get_backend(spec, dtype=dtype, batch_size=batch_size, progress=True)
    if spec.engine == "llamacpp":
        return get_backend(spec, progress=True)
    if spec.engine == "openai":
        return get_backend(spec, concurrency=batch_size)
    raise UserError(f"{spec}: evaluation runs transformers:MODEL, llamacpp:FILE.gguf or openai:NAME models")


def evaluate(
    backend: Backend,
    task: str,
    corpus_dir: str | Path,
    out_dir: str | Path,
    split: str = "test",
    limit: int | None = None,
    prompting: str = "auto",
    decoding: Decoding = TITLE_DECODING,
    seed: int = 0,
    shots: int | None = None,
) -> MetricReport:
    """Run one loaded model (`load_backend`) on one task and split; write predictions, metrics and
    plots to `out_dir`. The backend is the caller's, so one load serves both tasks. `shots` sets
    the number of few-shot examples (default FEW_SHOTS[task])."""
    check_task(task)
    from econlm.backends.hf import TransformersBackend

    if decoding.num_beams > 1 and not isinstance(backend, TransformersBackend):
        raise UserError(f"{backend.name}: beam search (--num-beams) runs on the transformers engine only")
    papers = load_split(corpus_dir, split, limit, seed)
    mode = resolve_prompting(prompting, backend)
    if shots is not None and (mode != "few-shot" or shots < 1):
        raise UserError("--shots takes a positive number, with --prompting few-shot")
    if mode == "one-shot":
        examples = [one_shot_example(corpus_dir, seed)]
    elif mode == "few-shot":
        examples = few_shot_examples(corpus_dir, task, shots or FEW_SHOTS[task], seed)
    else:
        examples = []
    training = training_record(backend.source_model)
    expected = (TITLE if task == "title" else CLASSIFY).id
    trained_with = training.get("templates", {}).get(task) if training else None
    # A model trained on classify-then-title sequences is asked as it was trained: the category with
    # the sequence's first turn (CLASSIFY's prompt), the title after its own answer to that turn.
    joint = mode == "zero-shot" and trained_jointly(training, task)
    if mode == "zero-shot" and trained_with and trained_with != expected and not joint:
        raise UserError(f"{backend.model_ref} was trained with prompt template {trained_with}, but this econlm "
                        f"evaluates {task} with {expected}; evaluate it with the econlm version that trained it")

    started = time.perf_counter()
    if task == "title":
        predictions, template_id = _titles(backend, papers, mode, examples, decoding, joint)
        references = [p.reference for p in predictions]
        report = title_report([p.prediction for p in predictions], references)
    else:
        predictions, template_id = _classify(backend, papers, mode, examples)
        template_id = CLASSIFY_THEN_TITLE.id if joint else template_id
        report = classification_report(
            [p.label for p in predictions], [p.predicted_label for p in predictions], LABELS
        )
        parsed = [p.free_generation_label for p in predictions]
        report.metrics["free_generation_parse_rate"] = sum(x is not None for x in parsed) / len(parsed)
        report.metrics["free_generation_accuracy"] = sum(x == p.label for x, p in zip(parsed, predictions)) / len(parsed)
    seconds = time.perf_counter() - started

    report.provenance = provenance.build(
        corpus_dir=corpus_dir,
        model=backend,
        seed=seed,
        task=task,
        split=split,
        n_examples=len(papers),
        limit=limit,
        prompting=mode,
        prompt_template=template_id,
        one_shot_example=examples[0].arxiv_id if mode == "one-shot" else None,
        few_shot_examples=[p.arxiv_id for p in examples] if mode == "few-shot" else None,
        training_run=training,
        decoding=dataclasses.asdict(decoding) if task == "title" else None,
        free_generation_decoding=dataclasses.asdict(FREE_GENERATION_DECODING) if task == "classify" else None,
        scoring="sum log-prob of each answer (constrained)" if task == "classify" else None,
        batch_size=backend.batch_size,
        seconds=round(seconds, 2),
        examples_per_second=round(len(papers) / seconds, 3),
    )
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "predictions.jsonl", predictions)
        atomic_write_json(tmp / "metrics.json", report.model_dump(mode="json"))
        if task == "classify":
            plot_confusion_matrix(
                report.metrics["confusion_matrix"], LABELS, tmp / "confusion_matrix.png",
                f"{backend.model_ref} ({mode}), {split} n={len(papers)}",
            )
    return report


def chat_prompts(template, task: str, abstracts: Sequence[str], examples: Sequence[Paper]) -> list[Messages]:
    """The training chat template, with any worked examples as earlier (user, assistant) turns."""
    shown = dataclasses.replace(template, examples=tuple((template.user.format(abstract=e.abstract), _answer(task, e))
                                                         for e in examples))
    return [[m.model_dump() for m in shown.prompt(abstract=abstract)] for abstract in abstracts]


def title_conversations(backend: Backend, abstracts: Sequence[str], after_category: bool,
                        examples: Sequence[Paper] = ()) -> tuple[list[Messages], str]:
    """The chats that ask a model for the titles of `abstracts`, and their template id; eval and the
    app's Title page both ask through here, so a model is asked the same way everywhere.

    A model trained on classify-then-title sequences (`after_category`, see `trained_jointly`) saw
    every title after the paper's category turn: it gets CLASSIFY's prompt answered with its own
    constrained choice of category, then the title turn. Any other model gets the title template,
    with `examples` (few-shot) as earlier worked turns."""
    if after_category:
        scores = backend.score_options(chat_prompts(CLASSIFY, "classify", abstracts, []), ANSWERS)
        categories = [ANSWERS[max(range(len(ANSWERS)), key=row.__getitem__)] for row in scores]
        return ([[m.model_dump() for m in CLASSIFY_THEN_TITLE.prompt(first_answer=category, abstract=abstract)]
                 for abstract, category in zip(abstracts, categories)], CLASSIFY_THEN_TITLE.id)
    return chat_prompts(TITLE, "title", abstracts, examples), TITLE.id


def _uses_chat(backend, mode: str) -> bool:
    return mode == "zero-shot" or (mode == "few-shot" and backend.has_chat_template)


def _titles(backend, papers: list[Paper], mode: str, examples: list[Paper], decoding: Decoding, joint: bool):
    if _uses_chat(backend, mode):  # joint runs are zero-shot
        conversations, template_id = title_conversations(backend, [p.abstract for p in papers], joint, examples)
        outputs = backend.chat(conversations, decoding)
    else:
        worked = [(e.abstract, e.title) for e in examples]
        prompts = [ONE_SHOT_TITLE.render(worked, p.abstract) for p in papers]
        outputs = backend.complete(prompts, decoding, stop=["\n"])
        template_id = ONE_SHOT_TITLE.id
    predictions = [
        TitlePrediction(id=f"title-{p.arxiv_id}", task="title", input=p.abstract, reference=p.title,
                        prediction=first_line(out[0]), raw_output=out[0])
        for p, out in zip(papers, outputs)
    ]
    return predictions, template_id


def _classify(backend, papers: list[Paper], mode: str, examples: list[Paper]):
    if _uses_chat(backend, mode):
        conversations = chat_prompts(CLASSIFY, "classify", [p.abstract for p in papers], examples)
        scores, free = backend.score_options_and_chat(conversations, ANSWERS, FREE_GENERATION_DECODING)
        template_id = CLASSIFY.id
    else:
        worked = [(e.abstract, LABEL_TO_ANSWER[e.primary_category]) for e in examples]
        prompts = [ONE_SHOT_CLASSIFY.render(worked, p.abstract) for p in papers]
        scores = backend.score_text_options(prompts, [f" {answer}" for answer in ANSWERS])
        free = backend.complete(prompts, FREE_GENERATION_DECODING, stop=["\n"])
        template_id = ONE_SHOT_CLASSIFY.id
    predictions = []
    for paper, row, out in zip(papers, scores, free):
        best = max(range(len(ANSWERS)), key=row.__getitem__)
        predictions.append(
            LMClassifyPrediction(
                id=f"classify-{paper.arxiv_id}", task="classify", input=paper.abstract,
                reference=LABEL_TO_ANSWER[paper.primary_category], prediction=ANSWERS[best],
                label=paper.primary_category, predicted_label=LABELS[best],
                option_logprobs=dict(zip(ANSWERS, row)), free_generation=out[0],
                free_generation_label=parse_category(out[0]),
            )
        )
    return predictions, template_id
