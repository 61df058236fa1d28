"""Training: answer-only loss mask, packing equivalence, the step schedule, an end-to-end debug run
(train -> run directory -> load_model -> merge) and one slow test of real steps on SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from econlm.config import load_config
from econlm.data.build import paper_examples
from econlm.evaluate import trained_jointly, training_record
from econlm.export import export_gguf
from econlm.models import ModelRef, load_model
from econlm.training import merge_run, train
from econlm.training.data import (
    Encoded,
    Schedule,
    answer_token_losses,
    collate,
    encode_example,
    micro_batches,
)
from econlm.types import Message, Paper, QAPair


def _labelled_text(tokenizer, item: Encoded) -> str:
    return tokenizer.decode([t for t, m in zip(item.input_ids, item.label_mask) if m])


@pytest.mark.parametrize("task", ["title", "classify"])
def test_loss_mask_covers_the_answer_and_its_end_of_turn_only(tokenizer, papers, task):
    example = paper_examples(task, papers[:1], "validation")[0]
    item = encode_example(example, tokenizer, max_length=512)
    assert _labelled_text(tokenizer, item) == example.reference + "<|im_end|>"
    # The unmasked prefix is token for token what inference feeds the model.
    prompt = tokenizer.apply_chat_template([m.model_dump() for m in example.messages[:-1]], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert item.input_ids[: len(prompt_ids)] == prompt_ids
    assert not any(item.label_mask[: len(prompt_ids)])
    assert all(item.label_mask[len(prompt_ids):-1]) and not item.label_mask[-1]  # the template's trailing newline


def test_long_examples_lose_the_end_of_the_abstract_not_the_answer(tokenizer, papers):
    example = paper_examples("title", papers[:1], "validation")[0]
    full = encode_example(example, tokenizer, max_length=512)
    short = encode_example(example, tokenizer, max_length=120)
    assert short.truncated and not full.truncated and len(short.input_ids) == 120
    assert _labelled_text(tokenizer, short) == example.reference + "<|im_end|>"
    text = tokenizer.decode(short.input_ids)
    assert text.startswith(tokenizer.decode(full.input_ids[:60]))  # system prompt and start of abstract kept
    assert text.endswith("<|im_start|>assistant\n" + example.reference + "<|im_end|>\n")


def test_multi_turn_qa_masks_every_assistant_turn_and_no_user_turn(tokenizer):
    from econlm.data.build import qa_examples

    pair = QAPair(source_id="2101.00001", question="What is a Nash equilibrium?", answer="A stable strategy profile.",
                  turns=[Message(role="user", content="Is it unique?"), Message(role="assistant", content="Not in general.")])
    paper = Paper(arxiv_id="2101.00001", title="Games", abstract="About games.", primary_category="econ.TH")
    example = qa_examples([pair], [paper], "train")[0]
    item = encode_example(example, tokenizer, max_length=512)
    assert _labelled_text(tokenizer, item) == "A stable strategy profile.<|im_end|>Not in general.<|im_end|>"


def test_packed_logits_equal_unpacked_logits(tiny_llama, tokenizer, papers):
    """Position ids that restart at 0 make transformers build a block-diagonal causal mask."""
    model, _ = load_model(ModelRef.parse(tiny_llama), device="cpu")
    items = [encode_example(e, tokenizer, 512) for e in paper_examples("classify", papers[:3], "validation")]
    with torch.no_grad():
        packed = collate(items, packed=True, pad_id=tokenizer.pad_token_id)
        assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
        # use_cache=False as in training: with a KV cache transformers skips packed-sequence detection.
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        offset = 0
        for item in items:
            alone = model(input_ids=torch.tensor([item.input_ids])).logits[0]
            torch.testing.assert_close(packed_logits[offset: offset + len(item.input_ids)], alone, atol=1e-5, rtol=1e-4)
            offset += len(item.input_ids)
        # The training loss agrees too: packed, padded and one by one.
        padded = collate(items, packed=False, pad_id=tokenizer.pad_token_id)
        one_by_one = sum(answer_token_losses(model, collate([i], False, tokenizer.pad_token_id)).sum() for i in items)
        torch.testing.assert_close(answer_token_losses(model, packed).sum(), one_by_one, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(answer_token_losses(model, padded).sum(), one_by_one, atol=1e-4, rtol=1e-5)


def _fake(task: str, n: int, length: int = 10) -> list[Encoded]:
    return [Encoded(f"{task}-{i}", task, [1] * (length + i % 7), [False] * (length - 1) + [True] * (1 + i % 7), False,
                    (task,), (0,) * (1 + i % 7))
            for i in range(n)]


def test_schedule_weights_order_and_resume_position():
    examples = _fake("title", 20) + _fake("classify", 10)
    schedule = Schedule(examples, {"title": 0.5, "classify": 2.0}, batch_size=8, seed=1, epochs=2, max_steps=None)
    assert schedule.epoch_size == 10 + 20 and schedule.steps_per_epoch == 4 and schedule.total_steps == 8
    epoch0 = [e.id for s in range(4) for e in schedule.step_examples(s)]
    assert sum(i.startswith("title") for i in epoch0) == 10 and len(set(i for i in epoch0 if i.startswith("title"))) == 10
    assert sorted(i for i in epoch0 if i.startswith("classify")) == sorted([f"classify-{k}" for k in range(10)] * 2)
    epoch1 = [e.id for s in range(4, 8) for e in schedule.step_examples(s)]
    assert epoch1 != epoch0  # reshuffled each epoch
    again = Schedule(examples, {"title": 0.5, "classify": 2.0}, batch_size=8, seed=1, epochs=2, max_steps=None)
    assert [e.id for e in again.step_examples(5)] == [e.id for e in schedule.step_examples(5)]


@pytest.mark.parametrize("packed", [False, True])
def test_micro_batches_fit_the_budget_and_cover_the_step(packed):
    items = _fake("title", 23, length=40)
    batches = micro_batches(items, token_budget=200, packed=packed)
    assert sorted(e.id for b in batches for e in b) == sorted(e.id for e in items)
    for batch in batches:
        cost = sum(len(e.input_ids) for e in batch) if packed else len(batch) * max(len(e.input_ids) for e in batch)
        assert cost <= 200
    # Two processes split a step between them without overlap.
    shares = [micro_batches(items, 200, packed, rank=r, world_size=2) for r in (0, 1)]
    ids = [e.id for share in shares for b in share for e in b]
    assert sorted(ids) == sorted(e.id for e in items)


SHIP_ADAPTER = Path(__file__).resolve().parents[1] / "scripts" / "ship_adapter.py"


@pytest.fixture(scope="module")
def debug_run(small_corpus, tmp_path_factory):
    config = load_config("debug", [f"data.corpus={small_corpus}", "train.max_steps=4", "train.eval_every=2"])
    return train(config, tmp_path_factory.mktemp("runs") / "debug", progress=False, preset="debug")


def test_debug_run_directory_describes_itself(debug_run, small_corpus):
    names = {p.name for p in debug_run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "econlm_run.json", "metrics.json", "train_log.jsonl",
            "train_curve.png", "tokenizer.json", "tokenizer_config.json", "base", "checkpoints"} <= names
    record = json.loads((debug_run / "econlm_run.json").read_text())
    assert record["templates"] == {"title": "econ-title@1", "classify": "econ-classify@1"}
    assert set(record["data"]["corpus_sha256"]) == {"train", "validation", "test"}
    assert record["base_model_hash"] == ModelRef.parse(debug_run).base.hash == ModelRef.parse(debug_run / "base").hash
    assert record["config"]["train"]["max_steps"] == 4 and record["seed"] == 0 and record["preset"] == "debug"
    assert json.loads((debug_run / "adapter_config.json").read_text())["base_model_name_or_path"] == "./base"
    metrics = json.loads((debug_run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["steps_done"] == 4 and metrics["best_step"] in (2, 4)
    assert set(metrics["best_val_loss"]) == {"title", "classify"}
    rows = [json.loads(line) for line in (debug_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    assert (debug_run / "train_curve.png").read_bytes()[:4] == b"\x89PNG"
    # Checkpoints carry optimizer state; the last K are kept.
    assert sorted(p.name for p in (debug_run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (debug_run / "checkpoints" / "step-4" / "optimizer.pt").is_file()


def test_best_adapter_is_the_one_with_the_lowest_validation_loss(debug_run):
    from safetensors.torch import load_file

    metrics = json.loads((debug_run / "metrics.json").read_text())
    evals = [json.loads(l) for l in (debug_run / "train_log.jsonl").read_text().splitlines() if "val_loss" in l]
    assert metrics["best_step"] == min(evals, key=lambda r: r["val_loss_mean"])["step"]
    best = load_file(str(debug_run / "adapter_model.safetensors"))
    at_best = load_file(str(debug_run / "checkpoints" / f"step-{metrics['best_step']}" / "adapter_model.safetensors"))
    assert best.keys() == at_best.keys() and all(torch.equal(best[k], at_best[k]) for k in best)


def test_run_dir_loads_and_merges(debug_run, tmp_path):
    run = ModelRef.parse(debug_run)
    model, tokenizer = load_model(run, device="cpu")
    merged_dir = merge_run(run, tmp_path / "merged")
    merged, _ = load_model(ModelRef.parse(merged_dir), device="cpu")
    assert not (merged_dir / "adapter_config.json").exists()
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "What is GDP?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, model(**enc).logits, atol=1e-4, rtol=1e-4)
    assert json.loads((merged_dir / "econlm_merged.json").read_text())["base_model"] == str((debug_run / "base").resolve())
    # A per-task run stays one after merge and GGUF export: asked the plain title prompt.
    gguf = ModelRef.parse(export_gguf(ModelRef.parse(merged_dir), tmp_path / "merged.gguf", progress=False)["out"])
    for model in (ModelRef.parse(merged_dir), gguf):
        assert training_record(model) == training_record(run) and not trained_jointly(training_record(model), "title")
        assert training_record(model)["templates"] == {"title": "econ-title@1", "classify": "econ-classify@1"}


def test_ship_adapter_copies_the_best_adapter_without_optimizer_state(debug_run, tmp_path):
    dest = tmp_path / "models" / "econlm-test"
    subprocess.run([sys.executable, str(SHIP_ADAPTER), str(debug_run), "--dest", str(dest)],
                   check=True, capture_output=True)
    names = {p.name for p in dest.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "econlm_run.json", "metrics.json", "README.md"} <= names
    assert "checkpoints" not in names and not list(dest.rglob("optimizer*"))
    assert (dest / "adapter_model.safetensors").read_bytes() == (debug_run / "adapter_model.safetensors").read_bytes()
    card = (dest / "README.md").read_text()
    best = json.loads((debug_run / "metrics.json").read_text())["best_step"]
    assert f"step {best}" in card and "finished: 4 steps" in card
    # Named after its folder, with the preset its run record names; not the default `econlm`.
    assert card.startswith("# econlm-test\n") and "--model econlm-test" in card
    # The fields its run set away from the preset are named (the corpus, resolved at run time, is not a change).
    assert "`debug` preset with `train.eval_every=2`, `train.max_steps=4` on" in card


def test_ship_adapter_stores_half_precision_weights_that_load_into_float32_lora_layers(debug_run):
    from safetensors.torch import load_file

    dest = debug_run.parent / "econlm-test-bf16"  # beside the run, so its "./base" resolves as "../debug/base"
    config = json.loads((debug_run / "adapter_config.json").read_text())
    subprocess.run([sys.executable, str(SHIP_ADAPTER), str(debug_run), "--dest", str(dest), "--weights-dtype", "bfloat16"],
                   check=True, capture_output=True)
    (dest / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "../debug/base"}))
    trained, stored = load_file(debug_run / "adapter_model.safetensors"), load_file(dest / "adapter_model.safetensors")
    assert stored.keys() == trained.keys() and {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert "Weights stored in bfloat16" in (dest / "README.md").read_text()
    from peft import get_peft_model_state_dict

    model, _ = load_model(ModelRef.parse(dest))
    loaded = get_peft_model_state_dict(model)  # keyed as the file is
    assert loaded.keys() == stored.keys() and {t.dtype for t in loaded.values()} == {torch.float32}
    assert all(torch.equal(loaded[key], stored[key].float()) for key in stored)


def test_the_model_card_counts_a_packaged_file_of_another_checkout_as_the_presets(tmp_path):
    """A run trained from another checkout records that checkout's copy of the preset's Q&A file:
    the same file, not a change; a file outside any econlm package is one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship_adapter", SHIP_ADAPTER)
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    config = load_config("cpu-smollm2-lora").model_dump(mode="json")
    config["data"]["qa_file"] = str(tmp_path / "other-tree" / "src" / "econlm" / "datasets" / "qa" / "econ-qa.jsonl")
    assert ship.changed_from_preset("cpu-smollm2-lora", config) == []
    config["data"]["qa_file"] = str(tmp_path / "econ-qa.jsonl")
    assert ship.changed_from_preset("cpu-smollm2-lora", config) == [f'data.qa_file="{tmp_path / "econ-qa.jsonl"}"']


def test_a_finished_run_is_not_overwritten(debug_run):
    from econlm.errors import UserError

    with pytest.raises(UserError, match="already holds a run"):
        train(load_config("debug"), debug_run)


@pytest.mark.slow
def test_two_real_steps_on_packaged_smollm2(small_corpus, tmp_path):
    """The default preset's real model: loss near what a trained instruct model gives, adapter moves."""
    from safetensors.torch import load_file

    config = load_config("cpu-smollm2-lora", [
        f"data.corpus={small_corpus}", "data.tasks={title: 1, classify: 1}", "train.max_steps=2", "train.batch_size=2",
        "data.max_train_examples_per_task=2", "data.val_examples_per_task=2",
    ])
    run = train(config, tmp_path / "smollm2", progress=False)
    rows = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(0 < x < 8 for x in losses)  # far below ln(49152) = 10.8 of a random model
    weights = load_file(str(run / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())  # B starts at zero
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"
    model, _ = load_model(ModelRef.parse(run), device="cpu")
    assert type(model).__name__.startswith("Peft")
