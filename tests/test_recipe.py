"""The training recipe's choices: how a step's answer-token losses are averaged (by token, task or
answer), the classify-then-title sequence of one paper (two answers, one forward pass) and early
stopping on validation loss, exact across a crash and `--resume`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from econlm.config import load_config
from econlm.data.build import paper_examples
from econlm.data.templates import CLASSIFY, CLASSIFY_THEN_TITLE, LABEL_TO_ANSWER
from econlm.errors import UserError
from econlm.models import ModelRef, load_model
from econlm.training import resume, train
from econlm.training.data import (
    answer_token_losses,
    classify_then_title,
    collate,
    encode_example,
    step_token_weights,
)
from econlm.training.trainer import Run


def _render_ids(tokenizer, messages, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                         add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _answer_spans(item) -> list[tuple[int, int]]:
    """(start, end) token indices of each run of labelled tokens."""
    spans, start = [], None
    for i, labelled in enumerate([*item.label_mask, False]):
        if labelled and start is None:
            start = i
        elif not labelled and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("which", ["smollm2", "qwen2"])
def test_classify_then_title_masks_exactly_the_two_answers(which, tokenizer, qwen2_tokenizer, papers):
    tok = tokenizer if which == "smollm2" else qwen2_tokenizer
    end = "<|im_end|>"
    paper = papers[0]
    item = encode_example(classify_then_title([paper])[0], tok, max_length=1024)
    label = LABEL_TO_ANSWER[paper.primary_category]
    (a0, a1), (b0, b1) = _answer_spans(item)
    assert tok.decode(item.input_ids[a0:a1]) == label + end
    assert tok.decode(item.input_ids[b0:b1]) == paper.title + end
    assert item.label_tasks == ["classify"] * (a1 - a0) + ["title"] * (b1 - b0)
    # What precedes each answer is token for token what inference feeds the model for that turn:
    # CLASSIFY's own prompt, then the conversation cut at the title turn.
    classify_prompt = _render_ids(tok, CLASSIFY.prompt(abstract=paper.abstract), True)
    title_prompt = _render_ids(tok, CLASSIFY_THEN_TITLE.prompt(first_answer=label, abstract=paper.abstract), True)
    assert item.input_ids[:a0] == classify_prompt and item.input_ids[:b0] == title_prompt
    # One sequence per paper costs about half the tokens of the two separate examples.
    separate = sum(len(encode_example(paper_examples(t, [paper], "validation")[0], tok, 1024).input_ids)
                   for t in ("title", "classify"))
    assert len(item.input_ids) < 0.7 * separate


def test_loss_averages_equal_the_hand_computed_means(tiny_llama, tokenizer, papers):
    model, _ = load_model(ModelRef.parse(tiny_llama), device="cpu")
    items = [encode_example(e, tokenizer, 512) for e in
             paper_examples("title", papers[:3], "validation") + paper_examples("classify", papers[3:5], "validation")]
    items.append(encode_example(classify_then_title(papers[5:6])[0], tokenizer, 512))
    with torch.no_grad():
        losses = [answer_token_losses(model, collate([item], False, tokenizer.pad_token_id)) for item in items]
        batch_losses = answer_token_losses(model, collate(items, False, tokenizer.pad_token_id))
    torch.testing.assert_close(batch_losses, torch.cat(losses), atol=1e-4, rtol=1e-4)  # collate's order, item by item
    by_task: dict[str, list[float]] = {"title": [], "classify": []}
    by_answer: list[list[float]] = []
    for item, values in zip(items, losses):
        for answer in range(len(item.answer_tasks)):
            mine = [v for v, a in zip(values.tolist(), item.label_answers) if a == answer]
            by_task[item.answer_tasks[answer]] += mine
            by_answer.append(mine)
    everything = [v for values in losses for v in values.tolist()]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    expected = {
        "token": mean(everything),
        "task": (1.0 * mean(by_task["title"]) + 3.0 * mean(by_task["classify"])) / 4.0,
        "answer": mean([mean(a) for a in by_answer]),
    }
    # Classification's one-word answers are a small share of the tokens: the averages differ.
    assert len(by_task["classify"]) < 0.3 * len(everything)
    assert abs(expected["token"] - expected["task"]) > 1e-3
    for average, want in expected.items():
        weights = step_token_weights(items, average, {"title": 1.0, "classify": 3.0})
        flat = torch.tensor([w for item in items for w in weights[item.id]])
        assert flat.sum().item() == pytest.approx(1.0)
        assert (batch_losses * flat).sum().item() == pytest.approx(want, rel=1e-5)


def test_recipe_fields_are_checked_where_declared(small_corpus):
    with pytest.raises(UserError, match="classify-then-title needs tasks title and classify"):
        load_config("debug", ["data.sequences=classify-then-title", "data.tasks={title: 1.0}"])
    with pytest.raises(UserError, match="task_loss_weights needs train.loss_average=task"):
        load_config("debug", ["train.task_loss_weights={title: 2.0}"])
    with pytest.raises(UserError, match="task_loss_weights: give trained tasks"):
        load_config("debug", ["train.loss_average=task", "train.task_loss_weights={qa: 2.0}"])
    with pytest.raises(UserError, match="early_stopping_patience"):
        load_config("debug", ["train.early_stopping_patience=0"])


# Two train papers at a high learning rate: validation loss stops improving after a few steps (the
# stopping step is read from the log, not assumed), well before max_steps.
EARLY = ["train.max_steps=16", "train.eval_every=1", "train.checkpoint_every=1", "train.keep_checkpoints=20",
         "train.early_stopping_patience=2", "train.learning_rate=0.1", "train.warmup_ratio=0",
         "data.max_train_examples_per_task=2", "train.loss_average=task", "train.task_loss_weights={classify: 3.0}",
         "data.sequences=classify-then-title", "lora.dropout=0"]


def _evaluations(run) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if "val_loss" in line]


@pytest.fixture(scope="module")
def early_run(small_corpus, tmp_path_factory):
    config = load_config("debug", [f"data.corpus={small_corpus}", *EARLY])
    return train(config, tmp_path_factory.mktemp("early") / "run", progress=False)


def test_early_stopping_stops_at_the_right_evaluation_and_ships_the_best(early_run):
    evals = _evaluations(early_run)
    best_step, best, stop = None, float("inf"), None
    for row in evals:  # the mean the run is chosen by weights the tasks as its training loss does
        assert row["val_loss_mean"] == pytest.approx((row["val_loss"]["title"] + 3 * row["val_loss"]["classify"]) / 4)
    for row in evals:  # by hand: the first evaluation that is the 2nd in a row without a new minimum
        if row["val_loss_mean"] < best:
            best, best_step, misses = row["val_loss_mean"], row["step"], 0
        else:
            misses += 1
            if misses == 2:
                stop = row["step"]
                break
    assert stop is not None and stop < 16 and evals[-1]["step"] == stop
    metrics = json.loads((early_run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["stopped_early"] and metrics["steps_done"] == stop
    assert metrics["best_step"] == best_step and metrics["total_steps"] == 16
    assert set(metrics["best_val_loss"]) == {"title", "classify"}
    assert [e["step"] for e in metrics["val_loss"]] == [r["step"] for r in evals]
    assert all(set(e) == {"step", "mean", "title", "classify"} for e in metrics["val_loss"])
    shipped = load_file(str(early_run / "adapter_model.safetensors"))
    at_best = load_file(str(early_run / "checkpoints" / f"step-{best_step}" / "adapter_model.safetensors"))
    assert shipped.keys() == at_best.keys() and all(torch.equal(shipped[k], at_best[k]) for k in shipped)
    record = json.loads((early_run / "econlm_run.json").read_text())
    assert record["templates"] == {"title": CLASSIFY_THEN_TITLE.id, "classify": CLASSIFY_THEN_TITLE.id}


def test_resume_after_a_crash_stops_where_the_uninterrupted_run_stops(early_run, small_corpus, tmp_path, monkeypatch):
    best_step = json.loads((early_run / "metrics.json").read_text())["best_step"]
    crash_at = best_step + 1  # one evaluation without improvement already counted before the crash
    save = Run._save_checkpoint

    def crash_after_saving(self, finished):
        save(self, finished)
        if self.state.step == crash_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "_save_checkpoint", crash_after_saving)
    run = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train(load_config("debug", [f"data.corpus={small_corpus}", *EARLY]), run, progress=False)
    assert not json.loads((run / "metrics.json").read_text())["finished"]
    monkeypatch.setattr(Run, "_save_checkpoint", save)
    resume(run, progress=False)
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, early_run))
    assert (got["steps_done"], got["best_step"], got["stopped_early"]) == (want["steps_done"], want["best_step"], True)
    assert [e["mean"] for e in got["val_loss"]] == pytest.approx([e["mean"] for e in want["val_loss"]], abs=1e-5)
    shipped, reference = (load_file(str(d / "adapter_model.safetensors")) for d in (run, early_run))
    assert all(torch.allclose(shipped[k], reference[k], atol=1e-6) for k in reference)


def test_eval_asks_a_classify_then_title_model_as_it_was_trained(early_run, small_corpus, tmp_path):
    from econlm.backends import Decoding
    from econlm.backends.hf import TransformersBackend
    from econlm.evaluate import ANSWERS, evaluate, load_split

    backend = TransformersBackend(ModelRef.parse(early_run), batch_size=4)
    decoding = Decoding(max_new_tokens=6, num_beams=2, length_penalty=0.5)
    report = evaluate(backend, "title", small_corpus, tmp_path / "title", split="validation", limit=3, decoding=decoding)
    assert report.provenance["prompt_template"] == CLASSIFY_THEN_TITLE.id
    assert report.provenance["decoding"]["num_beams"] == 2 and report.provenance["decoding"]["length_penalty"] == 0.5
    papers = load_split(small_corpus, "validation", limit=3)
    scores = backend.score_options([[m.model_dump() for m in CLASSIFY.prompt(abstract=p.abstract)] for p in papers], ANSWERS)
    labels = [ANSWERS[max(range(3), key=row.__getitem__)] for row in scores]
    asked = [[m.model_dump() for m in CLASSIFY_THEN_TITLE.prompt(first_answer=label, abstract=p.abstract)]
             for p, label in zip(papers, labels)]
    raw = [json.loads(line)["raw_output"] for line in (tmp_path / "title" / "predictions.jsonl").read_text().splitlines()]
    assert raw == [out[0] for out in backend.chat(asked, decoding)]
    classify = evaluate(backend, "classify", small_corpus, tmp_path / "classify", split="validation", limit=3)
    assert classify.provenance["prompt_template"] == CLASSIFY_THEN_TITLE.id


def test_merged_and_exported_joint_run_is_still_asked_as_it_was_trained(early_run, small_corpus, tmp_path):
    """The run's record travels with the model: into the merged folder, and into the GGUF's metadata
    (kept by llama.cpp's quantiser), so eval through llama.cpp puts the category turn first."""
    from econlm.backends import Decoding, get_backend
    from econlm.evaluate import evaluate, trained_jointly, training_record
    from econlm.export import export_gguf
    from econlm.training import merge_run

    run = ModelRef.parse(early_run)
    merged = ModelRef.parse(merge_run(run, tmp_path / "merged"))
    gguf = ModelRef.parse(export_gguf(run, tmp_path / "run.q8_0.gguf", "q8_0", progress=False)["out"])
    for model in (merged, gguf):
        assert training_record(model) == training_record(run) and trained_jointly(training_record(model), "title")
    report = evaluate(get_backend(f"llamacpp:{gguf.path}"), "title", small_corpus, tmp_path / "eval", split="validation",
                      limit=2, decoding=Decoding(max_new_tokens=4))
    assert report.provenance["prompt_template"] == CLASSIFY_THEN_TITLE.id


def test_app_asks_a_classify_then_title_model_as_it_was_trained(early_run, papers, monkeypatch):
    """The Title page's conversation is the training sequence cut at the title turn, its category
    the one the Classify page puts first; a per-task model still gets the title template."""
    from econlm.app import tasks
    from econlm.backends.hf import TransformersBackend
    from econlm.data.templates import TITLE
    from econlm.evaluate import trained_jointly, training_record
    from econlm.types import normalize_ws

    backend = TransformersBackend(ModelRef.parse(early_run), batch_size=4)
    after_category = trained_jointly(training_record(backend.model_ref), "title")
    assert after_category and not trained_jointly(training_record(backend.model_ref), "qa")
    asked, chat = [], backend.chat

    def recording_chat(conversations, decoding):
        asked.extend(conversations)
        return chat(conversations, decoding)

    monkeypatch.setattr(backend, "chat", recording_chat)
    abstract = normalize_ws(papers[0].abstract)  # as the page passes it on
    title, _ = tasks.suggest_titles(backend, abstract, after_category=after_category)
    probabilities = tasks.classify(backend, abstract)
    category = LABEL_TO_ANSWER[max(probabilities, key=probabilities.get)]
    assert asked == [[m.model_dump() for m in CLASSIFY_THEN_TITLE.prompt(first_answer=category, abstract=abstract)]]
    assert title == tasks._clean_title(chat(asked, tasks.TITLE_DECODING)[0][0])
    asked.clear()
    tasks.suggest_titles(backend, abstract, after_category=False)
    assert asked == [[m.model_dump() for m in TITLE.prompt(abstract=abstract)]]


def test_a_served_joint_run_is_asked_as_it_was_trained_through_the_openai_backend(early_run, small_corpus,
                                                                                    tmp_path, monkeypatch):
    """`econlm serve` reports its model's folder as `root` in /v1/models (as vLLM does for an
    adapter), so an OpenAI-backend client on the same machine reads the run's record: eval and the
    app then put the category turn first instead of asking with the plain title prompt. The server's
    `logprobs` let that client choose the category."""
    from econlm.backends.hf import TransformersBackend
    from econlm.backends.openai import OpenAIBackend
    from econlm.evaluate import evaluate, trained_jointly, training_record
    from econlm.serve import create_app, serving

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ECONLM_API_KEY", raising=False)
    with serving(create_app(TransformersBackend(ModelRef.parse(early_run), batch_size=1), "econlm")) as url:
        client = OpenAIBackend("econlm", base_url=f"{url}/v1", max_retries=0)
        assert client.model_ref is None and client.source_model.path == early_run.resolve()
        assert training_record(client.source_model) == training_record(ModelRef.parse(early_run))
        assert trained_jointly(training_record(client.source_model), "title")
        assert OpenAIBackend("other-name", base_url=f"{url}/v1", max_retries=0).source_model is None
        report = evaluate(client, "title", small_corpus, tmp_path / "served", limit=2)
    assert report.provenance["prompt_template"] == CLASSIFY_THEN_TITLE.id
    asked = [json.loads(line) for line in (tmp_path / "served" / "predictions.jsonl").read_text().splitlines()]
    assert len(asked) == 2 and all(row["prediction"] for row in asked)
