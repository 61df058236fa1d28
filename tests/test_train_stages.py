"""Two training stages: a run that starts from an existing adapter (`model.init_adapter`) instead of
a fresh LoRA, checked against its base and `lora:`, recorded, resumable; and the Q&A-stage preset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from train_processes import assert_same_weights

from conftest import run_cli
from econlm.config import load_config
from econlm.errors import UserError
from econlm.io import sha256_file
from econlm.models import ModelRef, load_model
from econlm.paths import package_data
from econlm.training import init_adapter, resume, train
from econlm.training.trainer import build_model

STEPS = ["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.keep_checkpoints=2"]


def stage2_overrides(stage1: Path, corpus: Path) -> list[str]:
    """The debug preset continuing `stage1`'s adapter on `stage1`'s random base."""
    return [f"data.corpus={corpus}", "model.random_init=null", f"model.base={stage1 / 'base'}",
            f"model.init_adapter={stage1}", *STEPS]


@pytest.fixture(scope="module")
def stage1(small_corpus, tmp_path_factory) -> Path:
    config = load_config("debug", [f"data.corpus={small_corpus}", *STEPS])
    return train(config, tmp_path_factory.mktemp("stage1") / "run", progress=False)


@pytest.fixture(scope="module")
def stage2(stage1, small_corpus, tmp_path_factory) -> Path:
    config = load_config("debug", stage2_overrides(stage1, small_corpus))
    return train(config, tmp_path_factory.mktemp("stage2") / "run", progress=False)


def _state(model) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model, save_embedding_layers=False)


def test_the_second_stage_starts_from_the_first_stages_adapter(stage1, small_corpus):
    config = load_config("debug", stage2_overrides(stage1, small_corpus))
    base = ModelRef.parse(config.model.base)
    start = init_adapter.resolve(config, base)
    assert start.path == stage1.resolve() and start.sha256 == sha256_file(stage1 / "adapter_model.safetensors")
    parent = load_file(str(stage1 / "adapter_model.safetensors"))
    continued = _state(build_model(config, base.pretrained_source(), base.text, 0, start))
    assert continued.keys() == parent.keys() and all(torch.equal(continued[k], parent[k]) for k in parent)
    fresh = _state(build_model(config, base.pretrained_source(), base.text, 0))
    assert not all(torch.equal(fresh[k], parent[k]) for k in parent)  # what the comparison above tells apart


def test_the_second_stage_trains_on_and_records_where_it_started(stage1, stage2):
    before, after = load_file(str(stage1 / "adapter_model.safetensors")), load_file(str(stage2 / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    record = json.loads((stage2 / "econlm_run.json").read_text())
    assert record["init_adapter"] == {"path": str(stage1.resolve()),
                                      "adapter_sha256": sha256_file(stage1 / "adapter_model.safetensors"),
                                      "base_model": str((stage1 / "base").resolve())}
    assert record["config"]["model"]["init_adapter"] == str(stage1)
    assert json.loads((stage1 / "econlm_run.json").read_text())["init_adapter"] is None
    assert json.loads((stage2 / "metrics.json").read_text())["finished"]
    model, _ = load_model(ModelRef.parse(stage2), device="cpu")  # loads on the base it was trained on
    assert type(model).__name__.startswith("Peft")


def test_the_model_card_names_the_adapter_the_run_started_from(stage1, stage2, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "ship_adapter.py"
    for run, dest in ((stage2, tmp_path / "stage2"), (stage1, tmp_path / "stage1")):
        subprocess.run([sys.executable, str(script), str(run), "--preset", "debug", "--dest", str(dest)],
                       check=True, capture_output=True)
    card = (tmp_path / "stage2" / "README.md").read_text()
    assert f"Started from the adapter `{stage1.resolve()}`" in card
    assert sha256_file(stage1 / "adapter_model.safetensors") in card
    assert "Started from" not in (tmp_path / "stage1" / "README.md").read_text()


def test_a_second_stage_resumes_exactly_without_its_first_stage_once_it_has_a_checkpoint(stage1, small_corpus,
                                                                                            tmp_path):
    first = shutil.copytree(stage1, tmp_path / "stage1", ignore=shutil.ignore_patterns("checkpoints"))
    run = train(load_config("debug", stage2_overrides(first, small_corpus)), tmp_path / "stage2", progress=False)
    step4 = run / "checkpoints" / "step-4"
    finished = shutil.copy(step4 / "adapter_model.safetensors", tmp_path / "finished.safetensors")
    shutil.rmtree(step4)
    parent_weights = first / "adapter_model.safetensors"
    kept = shutil.move(parent_weights, tmp_path / "parent.safetensors")  # e.g. replaced by a newer shipped adapter
    resume(run, progress=False)
    assert_same_weights(step4 / "adapter_model.safetensors", finished)

    # Without a checkpoint the run starts again from its first stage, which must be the one it started from.
    shutil.rmtree(run / "checkpoints")
    shutil.copy(finished, parent_weights)
    with pytest.raises(UserError, match=r"model\.init_adapter .* changed since the run started"):
        resume(run, progress=False)
    shutil.move(kept, parent_weights)
    resume(run, progress=False)
    assert_same_weights(step4 / "adapter_model.safetensors", finished)


def _bad_stage2(stage1: Path, corpus: Path, tiny_llama: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Case -> (what replaces stage 2's overrides, text its one error line must hold)."""
    good = stage2_overrides(stage1, corpus)
    return {
        "missing folder": ([*good, f"model.init_adapter={tmp / 'missing'}"],
                           f"model.init_adapter: {tmp / 'missing'}: not a LoRA adapter folder"),
        "other base": ([*good, f"model.base={tiny_llama}"],
                       f"model.init_adapter: {stage1} was trained on base {(stage1 / 'base').resolve()}, "
                       f"not on this run's model.base {tiny_llama}"),
        "other rank": ([*good, "lora.r=4"], "this run's lora: has r=4, alpha=16 (give lora: the adapter's values)"),
        "other modules": ([*good, "lora.target_modules=[q_proj, v_proj]"],
                          "its LoRA weights do not fit this run's lora: (first difference: "),
        "random base": ([*good, "model.random_init={num_hidden_layers: 2}"],
                        "field 'model': Value error, model.init_adapter continues an adapter on the base"),
    }


@pytest.mark.parametrize("case", ["missing folder", "other base", "other rank", "other modules", "random base"])
def test_a_starting_adapter_that_does_not_fit_is_a_one_line_error_before_anything_is_written(
        case, stage1, small_corpus, tiny_llama, tmp_path):
    overrides, needle = _bad_stage2(stage1, small_corpus, tiny_llama, tmp_path)[case]
    with pytest.raises(UserError) as err:
        train(load_config("debug", overrides), tmp_path / "run", progress=False)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_on_the_command_line_it_is_exit_2_and_one_line(stage1, small_corpus, tiny_llama, tmp_path, home):
    overrides, needle = _bad_stage2(stage1, small_corpus, tiny_llama, tmp_path)["other modules"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    result = run_cli("train", "--config", "debug", *sets, "--out", str(tmp_path / "run"), home=home)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"econlm: error: {init_adapter.FIELD}: "), result.stderr[-3000:]
    assert needle in lines[0]
    assert lines[0].endswith("it adapts down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj: "
                             "give those as lora.target_modules")
    assert not (tmp_path / "run").exists()


def test_the_qa_stage_preset_continues_the_shipped_qwen_adapter_with_replay():
    stage1_preset, qa = load_config("cpu-qwen2.5-0.5b-lora"), load_config("cpu-qwen2.5-0.5b-qa")
    assert qa.model.init_adapter == (package_data("adapters") / "econlm-qwen2.5-coder-0.5b").resolve()
    assert qa.model.base == stage1_preset.model.base and qa.lora == stage1_preset.lora
    assert qa.data.sequences == stage1_preset.data.sequences  # the replayed sequences are those stage 1 learnt
    assert qa.data.qa_file == (package_data("datasets") / "qa" / "econ-qa-qwen.jsonl").resolve()
    replay = qa.data.tasks["title"]
    assert qa.data.tasks["qa"] == 1.0 and 0 < replay == qa.data.tasks["classify"] < 1
    assert qa.train.early_stopping_patience and qa.train.learning_rate < stage1_preset.train.learning_rate
