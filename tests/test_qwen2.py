"""The Qwen2 family (Qwen2.5-Coder 0.5B / 1.5B) wherever a model is named: the training loss mask
under its chat template, a LoRA run on a Qwen2 base, GGUF export that llama.cpp runs as
transformers does, eval, and (slow) the real packages assembled, converted and checked against
llama.cpp on their own GGUF.

The fast tests use `tiny_qwen2` (conftest): a random 2-layer Qwen2 with the real tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import llama_cpp
import numpy as np
import pytest
import torch
from gguf import GGUFReader, TokenType
from transformers import AutoModelForCausalLM

from econlm.config import load_config
from econlm.data.build import paper_examples
from econlm.errors import UserError
from econlm.export import _pre_tokenizer_name, export_gguf
from econlm.models import REGISTRY, ModelRef, load_model
from econlm.training import train
from econlm.training.data import encode_example
from gguf_models import hf_logits, llama_logits, prompt_ids

CONVERSATIONS = [
    [{"role": "system", "content": "You are an economist."}, {"role": "user", "content": "What is GDP?"}],
    # Digits, contractions, punctuation runs, newlines and non-ASCII: where Qwen2's split regex differs
    # from GPT-2's and SmolLM's.
    [{"role": "user", "content": "It's 2024: GDP grew 3.25% (vs. 1,000 in '99)...\n\n\tWe'll see; déjà-vu — 東京?!"}],
    [{"role": "system", "content": "Write titles."}, {"role": "user", "content": "Abstract: We study   auctions\r\nwith bidders."}],
]


@pytest.mark.parametrize("task", ["title", "classify"])
def test_loss_mask_covers_the_answer_and_im_end_under_the_qwen_template(qwen2_tokenizer, papers, task):
    tokenizer = qwen2_tokenizer
    example = paper_examples(task, papers[:1], "validation")[0]
    item = encode_example(example, tokenizer, max_length=512)
    labelled = [t for t, m in zip(item.input_ids, item.label_mask) if m]
    assert tokenizer.decode(labelled) == example.reference + "<|im_end|>"
    assert labelled[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template([m.model_dump() for m in example.messages[:-1]], tokenize=False,
                                           add_generation_prompt=True)
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert item.input_ids[:prompt_len] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert not any(item.label_mask[:prompt_len]) and not item.label_mask[-1]  # the template's trailing newline


def test_lora_training_on_a_qwen2_base(tiny_qwen2, small_corpus, tmp_path):
    """The debug recipe with the tiny Qwen2 as its base (not a random LLaMA): the run directory is an
    adapter over that Qwen2 folder, and the adapter changes the model."""
    config = load_config("debug", [f"data.corpus={small_corpus}", f"model.base={tiny_qwen2}", "model.random_init=null",
                                   "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2"])
    run_dir = train(config, tmp_path / "run", progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] and set(metrics["best_val_loss"]) == {"title", "classify"}
    assert all(math.isfinite(loss) for loss in metrics["best_val_loss"].values())
    run = ModelRef.parse(run_dir)
    assert run.base.kind == "hf-folder" and run.base.path == tiny_qwen2.resolve()
    targets = json.loads((run_dir / "adapter_config.json").read_text())["target_modules"]
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"} <= {name.rsplit(".", 1)[-1] for name in targets}
    tuned, tokenizer = load_model(run, merge_adapter=True)
    assert tuned.config.model_type == "qwen2"
    ids = prompt_ids(tokenizer, CONVERSATIONS[0])
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    assert np.abs(hf_logits(tuned, ids) - hf_logits(base, ids)).max() > 1e-3


@pytest.fixture(scope="module")
def tiny_qwen2_f16(tiny_qwen2, tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-gguf") / "tiny-qwen2.f16.gguf"
    export_gguf(ModelRef.parse(tiny_qwen2), path, "f16", progress=False)
    return path


def test_gguf_export_is_a_qwen2_file_with_biases_and_its_own_output_head(tiny_qwen2, tiny_qwen2_f16, qwen2_tokenizer):
    reader = GGUFReader(tiny_qwen2_f16)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "qwen2"
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert fields["qwen2.rope.freq_base"].contents() == 1_000_000.0
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["tokenizer.chat_template"].contents() == qwen2_tokenizer.chat_template
    tokens = fields["tokenizer.ggml.tokens"].contents()
    eos = qwen2_tokenizer.eos_token_id
    assert tokens[eos] == "<|im_end|>" and fields["tokenizer.ggml.token_type"].contents()[eos] == TokenType.CONTROL
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias", "output.weight"} <= names
    assert not any(n.endswith("attn_output.bias") for n in names)


def test_llama_cpp_tokenizes_and_scores_the_export_as_transformers_does(tiny_qwen2, tiny_qwen2_f16, qwen2_tokenizer):
    """Same prompt tokens under llama.cpp's qwen2 pre-tokenizer; logits within f16 rounding (the model's
    weights are f16-exact, see conftest)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()
    llm = llama_cpp.Llama(str(tiny_qwen2_f16), n_ctx=512, verbose=False)
    for conversation in CONVERSATIONS:
        text = qwen2_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt_ids(qwen2_tokenizer, conversation)
    llm.close()
    ids = prompt_ids(qwen2_tokenizer, CONVERSATIONS[1])
    expected, got = hf_logits(model, ids), llama_logits(tiny_qwen2_f16, ids)
    assert expected.std() > 1.0  # logits spread enough for the comparison to mean something
    assert np.abs(expected - got).max() < 0.1


def test_a_split_regex_llama_cpp_does_not_know_is_refused_not_mislabelled(qwen2_tokenizer):
    """Qwen2's pre-tokenizer is recognised by its regex: the same structure with another regex (Llama-3
    groups up to three digits) would tokenize differently under llama.cpp's qwen2 and is an error."""
    tokenizer_json = json.loads(qwen2_tokenizer.backend_tokenizer.to_str())
    assert _pre_tokenizer_name(tokenizer_json) == "qwen2"
    split = tokenizer_json["pre_tokenizer"]["pretokenizers"][0]
    split["pattern"]["Regex"] = split["pattern"]["Regex"].replace(r"\p{N}|", r"\p{N}{1,3}|")
    with pytest.raises(UserError, match="pre-tokenizers only"):
        _pre_tokenizer_name(tokenizer_json)


def test_cli_eval_classify_on_a_qwen2_model(tiny_qwen2, small_corpus, tmp_path):
    env = {**os.environ, "ECONLM_DATA": str(small_corpus)}
    result = subprocess.run([sys.executable, "-m", "econlm.cli", "eval", "--model", str(tiny_qwen2), "--task", "classify",
                             "--corpus", str(small_corpus), "--limit", "3", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["option_logprobs"]) == 3 and all(math.isfinite(v) for v in row["option_logprobs"].values())
        assert row["predicted_label"] in ("econ.EM", "econ.GN", "econ.TH")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["provenance"]["model"]["kind"] == "hf-folder"


# ------------------------------------------------------------------------- the real packages


@pytest.mark.slow
def test_packaged_qwen2_5_coder_0_5b_converts_and_agrees_with_llama_cpp_on_its_gguf():
    """Assembled from its six part packages and sha256-checked, converted once to safetensors; the
    converted model (transformers, fp32) and llama.cpp on the original Q4_K_M file score and continue
    a chat prompt alike (llama.cpp also rounds activations to 8 bits, so logits are close, not equal)."""
    ref = ModelRef.parse("qwen2.5-coder-0.5b-instruct")
    gguf_file = ref.gguf_file()
    assert gguf_file.stat().st_size == 491_400_064
    model, tokenizer = load_model(ref, dtype="float32", device="cpu")
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 24
    conversation = [{"role": "user", "content": "Write a title for a paper on minimum wages and employment in Germany."}]
    ids = prompt_ids(tokenizer, conversation)

    llm = llama_cpp.Llama(str(gguf_file), n_ctx=256, logits_all=True, verbose=False)
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got, expected = np.array(llm.scores[: len(ids)]), hf_logits(model, ids)
    assert np.abs(expected - got).max() < 1.5  # about 0.6 measured; logits span about 40
    assert np.corrcoef(expected[-1], got[-1])[0, 1] > 0.995

    with torch.no_grad():
        hf_tokens = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    llm.reset()
    cpp_tokens = []
    for token in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        cpp_tokens.append(token)
        if len(cpp_tokens) == len(hf_tokens):
            break
    llm.close()
    assert cpp_tokens == hf_tokens
    assert "Minimum Wage" in tokenizer.decode(hf_tokens)  # a real answer, not noise


@pytest.mark.slow
def test_packaged_qwen2_5_coder_1_5b_assembles_from_its_22_parts():
    """Assembly and sha256 only: converting it would write 6 GB of fp32 weights."""
    entry = REGISTRY["qwen2.5-coder-1.5b-instruct"]
    path = entry.gguf_path()
    assert path.stat().st_size == 1_117_320_768
    fields = GGUFReader(path).fields
    assert fields["general.architecture"].contents() == "qwen2"
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
