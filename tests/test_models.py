"""Model references: packaged GGUF (sha256-checked, converted once, cached), folders, files, hub ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from econlm import models
from econlm.errors import UserError


def test_resolve_kinds(tmp_path):
    assert models.resolve("smollm2-135m-instruct").kind == "packaged"
    assert models.resolve("meta-llama/Llama-2-7b-hf") == models.ResolvedModel("hub", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert models.resolve(tmp_path / "hf").kind == "hf-folder"
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text("{}")
    assert models.resolve(tmp_path / "ad").kind == "adapter"
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert models.resolve(tmp_path / "m.gguf").kind == "gguf"


@pytest.mark.parametrize("ref", ["no-such-model", "./missing-dir", "/definitely/not/here"])
def test_unknown_references_are_user_errors(ref):
    with pytest.raises(UserError):
        models.resolve(ref)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="neither a HF model folder"):
        models.resolve(tmp_path)


def test_gguf_sha256_mismatch_is_refused(monkeypatch):
    entry = models.REGISTRY["smollm2-135m-instruct"]
    monkeypatch.setitem(models.REGISTRY, entry.name, replace(entry, gguf_sha256="0" * 64))
    with pytest.raises(UserError, match="does not match the pinned"):
        models.REGISTRY[entry.name].gguf_path()


def test_corrupt_gguf_file_fails_cleanly_without_a_cache_entry(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(UserError, match="cannot read as a GGUF model"):
        models.converted_dir(bad)
    leftovers = list((models.econlm_home() / "models").glob("broken-*"))
    assert leftovers == []


@pytest.mark.slow
def test_packaged_model_converts_once_then_loads_from_cache():
    path = models.converted_dir("smollm2-135m-instruct")
    marker = path / models.CONVERTED_MARKER
    stamp = marker.stat().st_mtime_ns
    assert json.loads(marker.read_text())["source_gguf_sha256"] == models.REGISTRY["smollm2-135m-instruct"].gguf_sha256
    assert (path / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    assert models.converted_dir("smollm2-135m-instruct") == path
    assert marker.stat().st_mtime_ns == stamp  # reused, not converted again

    model, tokenizer = models.load_model("smollm2-135m-instruct")
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
