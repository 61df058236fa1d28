"""`econlm export gguf`: llama.cpp runs the exported file as transformers runs the model.

f16: same prompt tokens, same greedy continuation, logits within f16 rounding. q8_0 / q4_k_m:
logits close, files smaller. A LoRA adapter directory is merged on the fly. Bad requests are
one-line errors.
"""

from __future__ import annotations

import subprocess
import sys

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import GGUFReader, TokenType
from transformers import AutoModelForCausalLM, AutoTokenizer

from econlm.errors import UserError
from econlm.export import export_gguf
from econlm.models import ModelRef
from gguf_models import hf_logits, llama_logits, prompt_ids, tiny_gguf, tiny_model_dir

CONVERSATIONS = [
    [{"role": "system", "content": "You are an economist."}, {"role": "user", "content": "What is GDP?"}],
    [{"role": "user", "content": "Explain inflation targeting in two sentences, with numbers: 2% and 3.5%."}],
    [{"role": "system", "content": "Write titles."}, {"role": "user", "content": "Abstract: We study   auctions\n\nwith déjà-vu bidders."}],
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def hf(root):
    folder = tiny_model_dir(root)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)





def test_f16_same_tokens_and_greedy_continuation(root, hf):
    """Same prompt tokens; same greedy tokens wherever transformers' choice is decisive. A step
    whose top-2 logit margin is under twice the measured logit error is a near-tie that f16
    arithmetic may flip, so the comparison of that prompt stops there."""
    model, tokenizer = hf
    path = tiny_gguf(root, "f16")
    llm = llama_cpp.Llama(str(path), n_ctx=512, verbose=False)
    compared = 0
    for conversation in CONVERSATIONS:
        ids = prompt_ids(tokenizer, conversation)
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True)
        expected = out.sequences[0, len(ids):].tolist()
        top2 = [step[0].topk(2).values for step in out.scores]
        margins = [float(v[0] - v[1]) for v in top2]
        error = np.abs(hf_logits(model, ids + expected) - llama_logits(path, ids + expected)).max()
        decisive = next((i for i, m in enumerate(margins) if m < 2 * error), len(margins))
        got = []
        llm.reset()
        for token in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            got.append(token)
            if len(got) == len(expected) or token == tokenizer.eos_token_id:
                break
        assert got[:decisive] == expected[:decisive]
        assert len(set(expected)) > 3  # a real continuation, not one repeated token
        compared += decisive
    llm.close()
    assert compared >= 24  # most of the 48 steps were decisive: the check is not vacuous


def test_f16_logits_match_within_rounding(root, hf):
    model, tokenizer = hf
    ids = prompt_ids(tokenizer, CONVERSATIONS[1])
    expected, got = hf_logits(model, ids), llama_logits(tiny_gguf(root, "f16"), ids)
    assert expected.std() > 1.0  # logits spread enough for the comparison to mean something
    assert np.abs(expected - got).max() < 0.1


def test_quantised_logits_close_smaller_files(root, hf):
    """q8_0 and q4_k_m track the model's logits, with error growing as bits shrink (on a random
    model tiny margins make argmax comparisons meaningless, so correlations are checked)."""
    model, tokenizer = hf
    ids = prompt_ids(tokenizer, CONVERSATIONS[0])
    expected = hf_logits(model, ids)
    error, correlation, size = {}, {}, {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        got = llama_logits(tiny_gguf(root, quant), ids)
        error[quant] = np.abs(expected - got).mean()
        correlation[quant] = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(expected, got)])
        size[quant] = tiny_gguf(root, quant).stat().st_size
    assert error["f16"] < error["q8_0"] < error["q4_k_m"]
    assert correlation["q8_0"] > 0.995 and correlation["q4_k_m"] > 0.95
    assert size["q4_k_m"] < size["q8_0"] < 0.7 * size["f16"]


def test_gguf_carries_tokenizer_and_chat_template(root, hf):
    _, tokenizer = hf
    fields = GGUFReader(tiny_gguf(root, "f16")).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(tokenizer)
    assert tokens[tokenizer.eos_token_id] == "<|im_end|>" and types[tokenizer.eos_token_id] == TokenType.CONTROL
    assert len(fields["tokenizer.ggml.merges"].contents()) > 40_000


def test_adapter_dir_is_merged_on_the_fly(root, hf, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir = tiny_model_dir(root)
    model, tokenizer = hf
    torch.manual_seed(1)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).merge_and_unload().eval()

    out = tmp_path / "merged.f16.gguf"
    adapter = ModelRef.parse(adapter_dir)
    info = export_gguf(adapter, out, "f16", progress=False)
    assert info["kind"] == "adapter" and info["model_hash"] == adapter.hash
    ids = prompt_ids(tokenizer, CONVERSATIONS[0])
    expected, base_logits, got = hf_logits(merged, ids), hf_logits(model, ids), llama_logits(out, ids)
    # Closer to the merged model than the adapter moved it away from the base.
    assert np.abs(expected - got).max() < 0.1 < np.abs(expected - base_logits).max()


def test_bad_requests_are_user_errors(root, tmp_path):
    with pytest.raises(UserError, match="unknown quantisation"):
        export_gguf(ModelRef.parse(tiny_model_dir(root)), tmp_path / "x.gguf", "q2_k")
    with pytest.raises(UserError, match="must end in .gguf"):
        export_gguf(ModelRef.parse(tiny_model_dir(root)), tmp_path / "x.bin", "f16")
    with pytest.raises(UserError, match="not a model folder"):
        ModelRef.parse(tmp_path / "missing")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp"))


def test_cli_export_and_error_exit(root, tmp_path):
    cmd = [sys.executable, "-m", "econlm.cli", "export", "gguf"]
    out = tmp_path / "cli.gguf"
    ok = subprocess.run([*cmd, str(tiny_model_dir(root)), "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert out.stat().st_size > 1_000_000 and "f16" in ok.stdout
    bad = subprocess.run([*cmd, str(tmp_path / "nope"), "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"econlm: error: {tmp_path / 'nope'}: not a model folder, .gguf file, or known model name"]
