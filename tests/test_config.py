"""Training config: presets parse, unknown keys and bad values are one-line errors naming file and field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from econlm.config import PRESETS_DIR, load_config
from econlm.errors import UserError

PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def test_the_issue_presets_are_shipped():
    assert {"cpu-smollm2-lora", "cpu-qwen2.5-0.5b-lora", "debug", "llama2-7b-qlora"} <= set(PRESETS)
    assert (PRESETS_DIR / "accelerate" / "ddp.yaml").is_file()


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parses_and_names_its_launch_command(preset):
    config = load_config(preset)
    header = [line for line in (PRESETS_DIR / f"{preset}.yaml").read_text().splitlines() if line.startswith("#")]
    assert any(f"econlm train --config configs/{preset}.yaml" in line for line in header)
    assert config.train.micro_batch_tokens >= config.data.max_length


def test_ddp_recipe_is_a_valid_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    cluster = load_config_from_file(str(PRESETS_DIR / "accelerate" / "ddp.yaml"))
    assert cluster.distributed_type.value == "MULTI_GPU"
    assert cluster.mixed_precision == "no"  # econlm's own autocast decides precision


def test_unknown_key_names_file_and_field(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  learning_rte: 0.1\n")
    with pytest.raises(UserError, match=r"typo\.yaml: field 'train\.learning_rte': unknown key"):
        load_config(path)


def test_unknown_section_is_rejected(tmp_path):
    path = tmp_path / "extra.yaml"
    path.write_text("optimiser: {lr: 1}\n")
    with pytest.raises(UserError, match="field 'optimiser': unknown key"):
        load_config(path)



@pytest.mark.parametrize(("text", "message"), [
    (b"", r"is empty; give the sections to set"),
    (b"# only a comment\n", r"is empty; give the sections to set"),
    (b"train:\n  max_steps: [1\n", r":3:1: invalid YAML \(expected ',' or '\]', but got '<stream end>'\)$"),
    (b"train: {max_steps: 1}\nlora: \xe9\n", r"not UTF-8 text \(byte 0xe9 at offset 28\)$"),
    (b"- model\n- train\n", r"expected a mapping of sections"),
], ids=["empty", "comments only", "syntax error", "latin-1", "a list"])
def test_a_config_that_says_nothing_usable_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_bytes(text)
    with pytest.raises(UserError, match=f"^{path}.*{message}") as err:
        load_config(path)
    assert "\n" not in str(err.value)

def test_set_overrides_are_dotted_and_typed():
    config = load_config("debug", ["train.max_steps=3", "data.tasks.title=0.5", "lora.target_modules=[q_proj, v_proj]"])
    assert config.train.max_steps == 3
    assert config.data.tasks == {"title": 0.5, "classify": 1.0}
    assert config.lora.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=1", "field 'train.lr': unknown key"),
    ("train.batch_size=many", "field 'train.batch_size'"),
    ("train.batch_size", "expected KEY=VALUE"),
    ("data.tasks={summary: 1}", "unknown task"),
    ("data.tasks.qa=1", "needs data.qa_file"),
    ("train.micro_batch_tokens=100", "must be >= data.max_length"),
])
def test_bad_overrides_are_user_errors(assignment, message):
    with pytest.raises(UserError, match=message):
        load_config("debug", [assignment])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError, match="known: .*debug"):
        load_config("no-such-preset")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_qlora_preset_on_cpu_is_a_one_line_error_naming_the_gpu_extra(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "econlm.cli", "train", "--config", "llama2-7b-qlora", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ}, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CUDA" in lines[0] and "econlm[gpu]" in lines[0]
    assert not (tmp_path / "run").exists()


def test_data_paths_in_a_yaml_file_are_relative_to_that_file(tmp_path, monkeypatch):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "mine.yaml").write_text(
        "data:\n  tasks: {qa: 1.0}\n  qa_file: ../qa/pairs.jsonl\n  corpus: /abs/corpus\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "configs")
    config = load_config(config_dir / "mine.yaml")
    assert config.data.qa_file == tmp_path / "qa" / "pairs.jsonl"
    assert config.data.corpus == Path("/abs/corpus")
    monkeypatch.chdir(tmp_path)  # a --set path stays relative to the working directory
    config = load_config(config_dir / "mine.yaml", ["data.qa_file=other.jsonl"])
    assert config.data.qa_file == Path("other.jsonl")


def test_the_default_preset_trains_on_the_shipped_qa_pairs():
    config = load_config("cpu-smollm2-lora")
    assert set(config.data.tasks) == {"title", "classify", "qa"}
    assert config.data.qa_file.is_file()


def test_the_qwen_preset_trains_both_answers_of_a_paper_with_task_balanced_loss_and_early_stopping():
    config = load_config("cpu-qwen2.5-0.5b-lora")
    assert config.model.base == "qwen2.5-coder-0.5b-instruct" and config.data.sequences == "classify-then-title"
    assert config.train.loss_average == "task" and config.train.early_stopping_patience == 2
    assert config.train.epochs > 1 and config.train.checkpoint_every < config.train.eval_every
