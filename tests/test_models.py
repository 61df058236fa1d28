"""Model references: packaged GGUF (sha256-checked, converted once, cached), folders, files, hub ids."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from econlm import models
from econlm.backends import EngineSpec, parse_spec
from econlm.errors import UserError
from econlm.io import sha256_dir
from econlm.models import ModelRef


def write_adapter(folder, base: str):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def test_model_ref_kinds(tmp_path):
    packaged = ModelRef.parse("smollm2-135m-instruct")
    assert (packaged.kind, packaged.source, packaged.name, packaged.base) == ("packaged", "smollm2-135m-instruct", "smollm2-135m-instruct", None)
    assert packaged.source_sha256 == models.REGISTRY["smollm2-135m-instruct"].gguf_sha256
    assert ModelRef.parse("meta-llama/Llama-2-7b-hf") == ModelRef("hub", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf")
    assert ModelRef.parse("meta-llama/Llama-2-7b-hf").hash == "hub:meta-llama/Llama-2-7b-hf"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "llama"}')
    folder = ModelRef.parse(tmp_path / "hf")
    assert (folder.kind, folder.source, folder.name, str(folder)) == ("hf-folder", str(tmp_path / "hf"), "hf", str(tmp_path / "hf"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    gguf = ModelRef.parse(tmp_path / "m.gguf")
    assert (gguf.kind, gguf.name, gguf.source_sha256) == ("gguf", "m", hashlib.sha256(b"GGUF").hexdigest())


def test_adapter_refs_carry_their_base(tmp_path):
    adapter = ModelRef.parse(write_adapter(tmp_path / "ad", "smollm2-135m-instruct"))
    assert adapter.kind == "adapter" and adapter.base == ModelRef.parse("smollm2-135m-instruct")
    # A training run of a random base records it as "./base", relative to the run folder.
    (tmp_path / "run" / "base").mkdir(parents=True)
    (tmp_path / "run" / "base" / "config.json").write_text('{"model_type": "llama"}')
    run = ModelRef.parse(write_adapter(tmp_path / "run" / "adapter", "../base"))
    assert run.base.kind == "hf-folder" and run.base.source == str(tmp_path / "run" / "base")
    assert run.describe()["base"] == run.base.describe()
    with pytest.raises(UserError, match="no base_model_name_or_path"):
        ModelRef.parse(write_adapter(tmp_path / "empty", ""))
    with pytest.raises(UserError, match="itself an adapter"):
        ModelRef.parse(write_adapter(tmp_path / "stacked", str(tmp_path / "ad")))


def test_shipped_adapter_is_named_econlm():
    shipped = ModelRef.parse("econlm")
    assert shipped.kind == "adapter" and shipped.name == "econlm" and shipped.path == models.SHIPPED_ADAPTER_DIR.resolve()
    trained_on = json.loads((models.SHIPPED_ADAPTER_DIR / "econlm_run.json").read_text())["base_model"]
    assert shipped.base == ModelRef.parse(trained_on) and shipped.base.kind == "packaged"


def test_every_shipped_adapter_folder_is_a_model_by_its_name(tiny_llama, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from econlm.classifier import shipped_classifier_dir

    root = tmp_path / "adapters"
    write_adapter(root / models.DEFAULT_SHIPPED_ADAPTER, "smollm2-135m-instruct")
    second = root / "econlm-tiny-llama"
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama)),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(second)
    (root / "notes").mkdir()  # no adapter_config.json: not a model
    monkeypatch.setattr(models, "SHIPPED_ADAPTERS_ROOT", root)
    monkeypatch.setattr(models, "SHIPPED_ADAPTER_DIR", root / models.DEFAULT_SHIPPED_ADAPTER)

    assert list(models.shipped_adapters()) == [models.DEFAULT_SHIPPED_ADAPTER, "econlm-tiny-llama"]
    added = ModelRef.parse("econlm-tiny-llama")
    assert (added.kind, added.name, added.path) == ("adapter", "econlm-tiny-llama", second.resolve())
    assert added.base == ModelRef.parse(tiny_llama) and parse_spec("transformers:econlm-tiny-llama").model == added
    model, _ = models.load_model(added, device="cpu")
    assert type(model).__name__.startswith("Peft")
    # `econlm` stays the default adapter, and is also reachable by its folder's name.
    default = ModelRef.parse("econlm")
    assert default.name == "econlm" and default.path == ModelRef.parse(models.DEFAULT_SHIPPED_ADAPTER).path
    assert default.path == (root / models.DEFAULT_SHIPPED_ADAPTER).resolve()

    rows = {row["name"]: row for row in models.list_models()}
    assert rows["econlm"]["status"] == "present" and models.DEFAULT_SHIPPED_ADAPTER in rows["econlm"]["description"]
    assert rows["econlm-tiny-llama"]["status"] == "present" and "notes" not in rows
    assert "default" in rows[models.DEFAULT_SHIPPED_ADAPTER]["description"]
    assert "default" not in rows["econlm-tiny-llama"]["description"]
    with pytest.raises(UserError, match="econlm-tiny-llama"):
        ModelRef.parse("econlm-nope")

    # A classifier belongs to the adapter it stacks on.
    assert shipped_classifier_dir().name == models.DEFAULT_SHIPPED_ADAPTER
    assert shipped_classifier_dir("econlm-tiny-llama").name == "econlm-tiny-llama"
    with pytest.raises(UserError, match="no shipped adapter 'econlm-nope'.*econlm-tiny-llama"):
        shipped_classifier_dir("econlm-nope")


def test_hash_is_the_safetensors_hash_computed_once(tiny_llama, monkeypatch):
    ref = ModelRef.parse(tiny_llama)
    assert ref.hash == sha256_dir(tiny_llama, "*.safetensors") and ref.source_sha256 is None
    monkeypatch.setattr(models, "sha256_dir", lambda *args: pytest.fail("hashed twice"))
    assert ref.describe() == {"ref": str(tiny_llama), "kind": "hf-folder", "name": tiny_llama.name, "hash": ref.hash,
                              "source_sha256": None, "base": None}


def test_a_gguf_file_hashes_like_its_converted_folder(tmp_path, monkeypatch):
    """A GGUF's `hash` is its converted folder's safetensors hash, the file's own sha256 beside it."""
    monkeypatch.setenv("ECONLM_HOME", str(tmp_path / "home"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    gguf = ModelRef.parse(tmp_path / "m.gguf")
    converted = tmp_path / "home" / "models" / f"m-{gguf.source_sha256[:12]}"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text('{"model_type": "llama"}')
    (converted / "model.safetensors").write_bytes(b"weights")
    (converted / models.CONVERTED_MARKER).write_text("{}")
    assert gguf.converted_dir() == converted
    assert gguf.hash == ModelRef.parse(converted).hash == sha256_dir(converted, "*.safetensors")
    assert gguf.describe(content_hash=False)["hash"] is None


@pytest.mark.parametrize(("config", "message"), [("{}", "config.json: no model_type"),
                                                  ('{"model_type": ', r"config.json:1: invalid JSON"),
                                                  ("[]", "config.json: expected a JSON object")])
def test_a_model_folder_with_a_broken_config_is_a_user_error(tmp_path, config, message):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(UserError, match=message):
        ModelRef.parse(tmp_path)


@pytest.mark.parametrize("ref", ["no-such-model", "./missing-dir", "/definitely/not/here"])
def test_unknown_references_are_user_errors(ref):
    with pytest.raises(UserError):
        ModelRef.parse(ref)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'gpt4': use one of smollm2-135m-instruct, gemma3-270m, "
                                        "qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct, econlm"):
        ModelRef.parse("gpt4")


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="neither a HF model folder"):
        ModelRef.parse(tmp_path)


def test_only_packaged_models_and_gguf_files_convert(tmp_path):
    with pytest.raises(UserError, match="only packaged models and .gguf files need conversion"):
        ModelRef.parse("org/name").converted_dir()
    with pytest.raises(UserError, match="is a LoRA adapter, not a base model"):
        ModelRef.parse(write_adapter(tmp_path / "ad", "org/name")).pretrained_source()


# ---------------------------------------------------------------------------------------- ENGINE:MODEL


def test_spec_grammar(tmp_path):
    assert parse_spec("smollm2-135m-instruct") == EngineSpec("transformers", model=ModelRef.parse("smollm2-135m-instruct"))
    assert parse_spec("transformers:org/name").model == ModelRef.parse("org/name")
    assert parse_spec("openai:gpt-4o-mini") == EngineSpec("openai", served_name="gpt-4o-mini")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    spec = parse_spec(f"llamacpp:{tmp_path / 'm.gguf'}")
    assert spec.engine == "llamacpp" and spec.model.kind == "gguf" and str(spec) == f"llamacpp:{tmp_path / 'm.gguf'}"
    assert parse_spec("llamacpp:gemma3-270m").model.kind == "packaged"  # a packaged model runs its GGUF
    assert str(parse_spec("org/name")) == "transformers:org/name"


@pytest.mark.parametrize(("spec", "message"), [
    ("vllm:org/name", "unknown engine 'vllm' in 'vllm:org/name': use transformers:MODEL, llamacpp:MODEL, openai:MODEL"),
    ("local:org/name", "unknown engine 'local'"),  # the retired prefix is the CLI's to translate
    ("openai:", "names no model"),
    ("transformers:no-such-model", "unknown model 'no-such-model'"),
    ("llamacpp:org/name", "the llamacpp engine runs a .gguf file or a packaged model"),
])
def test_bad_specs_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        parse_spec(spec)
    assert "\n" not in str(caught.value)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "econlm.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_bad_spec_is_one_line_exit_2(tmp_path):
    out = ["--out", str(tmp_path / "o")]
    for command in (["eval", "--task", "title", *out], ["serve"], ["app"], ["qa", "synthesize", "--split", "test", *out]):
        result = run_cli(*command, "--model", "vllm:x", cwd=tmp_path)
        assert result.returncode == 2, command
        assert result.stderr.strip().count("\n") == 0 and "unknown engine 'vllm'" in result.stderr, command
    result = run_cli("bench", "infer", "--model", "openai:x", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "this command runs transformers: models" in result.stderr


def test_deprecated_eval_backend_option_still_works_with_a_warning(tmp_path):
    from gguf_models import tiny_gguf

    gguf = tiny_gguf(tmp_path, "f16")
    result = run_cli("eval", "--backend", "llamacpp", "--model", str(gguf), "--task", "summarise", "--out", str(tmp_path / "o"))
    assert result.stderr.splitlines()[0] == (f"econlm: warning: --backend llamacpp is deprecated and will be removed in "
                                             f"the next release; use --model llamacpp:{gguf}")
    assert "unknown task 'summarise'" in result.stderr  # the spec was accepted; the task is what failed


def test_deprecated_app_backend_option_passes_the_spec_on(monkeypatch):
    from click.testing import CliRunner

    from econlm.cli import cli

    seen = {}
    monkeypatch.setattr(os, "execvpe", lambda path, args, env: seen.update(env=env))
    result = CliRunner().invoke(cli, ["app", "--backend", "openai:served"])
    assert result.exit_code == 0, result.output
    assert "--backend is deprecated" in result.output and "use --model openai:served" in result.output
    assert seen["env"]["ECONLM_BACKEND"] == "openai:served"
    result = CliRunner().invoke(cli, ["app", "--model", "openai:served", "--backend", "openai:other"])
    assert result.exit_code == 2 and "give the model once" in result.output


def test_gguf_sha256_mismatch_is_refused(monkeypatch):
    entry = models.REGISTRY["smollm2-135m-instruct"]
    monkeypatch.setitem(models.REGISTRY, entry.name, replace(entry, gguf_sha256="0" * 64))
    with pytest.raises(UserError, match="does not match the pinned"):
        models.REGISTRY[entry.name].gguf_path()


def test_corrupt_gguf_file_fails_cleanly_without_a_cache_entry(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(UserError, match="cannot read as a GGUF model"):
        ModelRef.parse(bad).converted_dir()
    leftovers = list((models.econlm_home() / "models").glob("broken-*"))
    assert leftovers == []


@pytest.mark.slow
def test_packaged_model_converts_once_then_loads_from_cache():
    packaged = ModelRef.parse("smollm2-135m-instruct")
    path = packaged.converted_dir()
    marker = path / models.CONVERTED_MARKER
    stamp = marker.stat().st_mtime_ns
    assert json.loads(marker.read_text())["source_gguf_sha256"] == models.REGISTRY["smollm2-135m-instruct"].gguf_sha256
    assert (path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    assert ModelRef.parse("smollm2-135m-instruct").converted_dir() == path
    assert marker.stat().st_mtime_ns == stamp  # reused, not converted again
    # The base's one content hash: what `econlm train` recorded for the shipped SmolLM2 adapter's base.
    shipped_run = json.loads((models.shipped_adapters()["econlm-smollm2-135m"] / "econlm_run.json").read_text())
    assert packaged.hash == shipped_run["base_model_hash"] == ModelRef.parse("econlm-smollm2-135m").base.hash

    model, tokenizer = models.load_model(packaged)
    enc = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is inflation?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "price level" in reply.lower()


@pytest.mark.slow
def test_models_list_cli_shows_registry():
    proc = subprocess.run([sys.executable, "-m", "econlm.cli", "models", "list"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    for name in ("smollm2-135m-instruct", "gemma3-270m", "econlm"):
        assert name in proc.stdout
