"""Export a (fine-tuned) LLaMA or Qwen2 model as one GGUF file for llama.cpp, Ollama, LM Studio.

The model is a `econlm.models.ModelRef`: a merged HF folder, a LoRA adapter or run directory
(merged on the fly), a packaged model name, or a hub id. The file carries the
weights, the BPE tokenizer (tokens, merges, special ids) and the chat template, so that llama.cpp
renders and tokenizes prompts exactly as training did, and the training run's record
(`econlm.evaluate.training_record`), so that the file is asked as it was trained.

Why not llama.cpp's `convert_hf_to_gguf.py`: no registry package ships it (llama-cpp-python's
wheel contains only the library). The pieces it is built from do ship, in the `gguf` package
that llama.cpp maintains: `GGUFWriter`, the HF -> GGUF tensor-name map and `SpecialVocab`; this
module wires them together for two architectures, following convert_hf_to_gguf's `LlamaModel`
(SmolLM2, Llama; its q/k permutation included) and `Qwen2Model` (Qwen2.5: q/k/v biases and no
permutation, since llama.cpp's qwen2 applies RoPE in HF's rotate-half layout). Quantisation to
q8_0 / q4_k_m is llama.cpp's own quantiser (`llama_model_quantize`, through llama-cpp-python):
gguf-py has no K-quant quantiser, and llama.cpp's picks per-tensor types (Q4_K_M mixes Q4_K/Q6_K,
with fallbacks for rows that are not a multiple of 256) exactly as `llama-quantize` does.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from econlm.errors import MissingExtraError, UserError
from econlm.evaluate import TRAINING_GGUF_KEY, training_record
from econlm.io import atomic_path
from econlm.models import ModelRef, load_model

QUANT_TYPES = ("f16", "q8_0", "q4_k_m")


def export_gguf(model_ref: ModelRef, out: str | Path, quant: str = "f16", progress: bool = True) -> dict[str, Any]:
    """Write MODEL_REF as a GGUF file at OUT (atomically); returns what was written.

    The file's description records the model's content hash (`ModelRef.hash`), which pairs a
    llama.cpp run of the file with the transformers runs of the model in a report; its metadata
    carries the model's `training_record` (econlm.training_run), so that eval, the app and the
    servers ask the file as its training run was asked (a classify-then-title model: the category
    turn first)."""
    if quant not in QUANT_TYPES:
        raise UserError(f"unknown quantisation {quant!r} (choose one of {', '.join(QUANT_TYPES)})")
    out = Path(out)
    if out.suffix != ".gguf":
        raise UserError(f"{out}: the output file name must end in .gguf")
    if quant != "f16":
        _require_llama_cpp()
    started = time.perf_counter()
    model, tokenizer = load_model(model_ref, dtype="float32", device="cpu", merge_adapter=True)
    info = {"model_ref": model_ref.text, "kind": model_ref.kind, "model_hash": model_ref.hash}
    description = f"econlm export of {model_ref} ({model_ref.kind}, content hash {model_ref.hash})"
    training = training_record(model_ref)
    with atomic_path(out) as tmp_path:
        if quant == "f16":
            _write_f16(model, tokenizer, tmp_path, model_ref.name, description, training, progress)
        else:
            # llama.cpp quantises from a file: write f16 beside the output, quantise, drop it.
            with tempfile.TemporaryDirectory(prefix=".econlm-export-", dir=out.parent) as scratch:
                f16_path = Path(scratch) / "model.f16.gguf"
                _write_f16(model, tokenizer, f16_path, model_ref.name, description, training, progress)
                quantize_gguf(f16_path, tmp_path, quant)
    return {
        **info,
        "out": str(out),
        "quant": quant,
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError("llama-cpp-python", "fast", "GGUF quantisation (q8_0, q4_k_m)") from None
    return llama_cpp


def quantize_gguf(src: str | Path, dest: str | Path, quant: str) -> None:
    """Quantise an f16 GGUF with llama.cpp's quantiser (what `llama-quantize` runs)."""
    import gguf

    llama_cpp = _require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}[quant]
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), params)
    if status != 0:
        raise UserError(f"{src}: llama.cpp could not quantise it to {quant} (status {status})")


# ---------------------------------------------------------------------------- f16 writer


@dataclass(frozen=True)
class _Architecture:
    """What differs between the architectures this writer maps."""

    gguf_arch: str  # member of gguf.MODEL_ARCH
    permute_qk: bool  # HF's rotate-half q/k rows -> llama.cpp's adjacent pairs (LLaMA only)


ARCHITECTURES = {"llama": _Architecture("LLAMA", permute_qk=True), "qwen2": _Architecture("QWEN2", permute_qk=False)}


def _check_architecture(config) -> _Architecture:
    """Only what this writer maps: plain LLaMA (SmolLM2, Llama-2/3-style) and Qwen2 (Qwen2.5), no rope
    scaling; anything else would load in llama.cpp and compute something else."""
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise UserError(
            f"GGUF export supports {' and '.join(ARCHITECTURES)} models only, not {config.model_type!r}; "
            "llama.cpp's convert_hf_to_gguf.py covers the others"
        )
    if config.model_type == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise UserError("GGUF export does not support LLaMA variants with attention or MLP biases")
    if getattr(config, "use_sliding_window", False):
        raise UserError("GGUF export does not support sliding-window attention (llama.cpp's qwen2 attends to the whole context)")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF export does not support rope scaling ({rope.get('rope_type')!r})")
    return arch


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _permute_for_llama_cpp(weights, n_head: int):
    """Undo the HF q/k row order: HF rotates half-dimension pairs, llama.cpp adjacent pairs
    (convert_hf_to_gguf's `LlamaModel.permute`)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _write_f16(model, tokenizer, path: Path, name: str, description: str, training: dict[str, Any] | None,
               progress: bool) -> None:
    import gguf
    import numpy as np

    config = model.config
    architecture = _check_architecture(config)
    arch = gguf.MODEL_ARCH[architecture.gguf_arch]
    n_layers, n_head = config.num_hidden_layers, config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_description(description)
    if training is not None:
        writer.add_string(TRAINING_GGUF_KEY, json.dumps(training))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, config.vocab_size)

    names = gguf.get_tensor_name_map(arch, n_layers)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # llama.cpp computes RoPE itself and reuses token_embd for a tied output
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if architecture.permute_qk and hf_name.endswith("q_proj.weight"):
            data = _permute_for_llama_cpp(data, n_head)
        elif architecture.permute_qk and hf_name.endswith("k_proj.weight"):
            data = _permute_for_llama_cpp(data, n_head_kv)
        # llama.cpp keeps 1-D tensors (norms, biases) in f32; matrices go to f16.
        writer.add_tensor(gguf_name, data.astype(np.float16 if data.ndim > 1 else np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=progress)
    writer.close()


# Split regexes llama.cpp implements under a pre-tokenizer name (llama-vocab.cpp), spelled as
# tokenizer.json spells them.
_SPLIT_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer (its regex split before BPE), read from the
    tokenizer's structure; convert_hf_to_gguf instead hashes sample tokenizations, which needs its
    table of known tokenizers."""
    pre = tokenizer_json.get("pre_tokenizer") or {}

    def is_byte_level(p: dict, use_regex: bool = True) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) == use_regex and not p.get("add_prefix_space", False)

    if is_byte_level(pre):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True} and is_byte_level(steps[1]):
        return "smollm"  # SmolLM/SmolLM2: single digits, then the GPT-2 split
    if len(steps) == 2 and is_byte_level(steps[1], use_regex=False):
        split = steps[0]  # Qwen2: its own regex split, then bytes to symbols without GPT-2's split
        isolated = split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
        name = _SPLIT_PRE_TOKENIZERS.get((split.get("pattern") or {}).get("Regex")) if isolated else None
        if name:
            return name
    raise UserError(
        f"GGUF export knows the GPT-2, SmolLM and Qwen2 pre-tokenizers only, not {json.dumps(pre)[:120]}; "
        "llama.cpp's convert_hf_to_gguf.py covers the others"
    )


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Tokens (with llama.cpp token types), merges, special ids, BOS/EOS flags and chat template."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError("GGUF export needs a fast (tokenizers-backed) tokenizer")
    tokenizer_json = json.loads(backend.to_str())
    bpe = tokenizer_json.get("model", {})
    if bpe.get("type") != "BPE" or bpe.get("byte_fallback") or (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError("GGUF export supports GPT-2-style byte-level BPE tokenizers only")
    if len(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}")

    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in id_to_token:  # embedding rows beyond the tokenizer (padded vocab)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(id_to_token[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    # Merges, special token ids and the chat template as llama.cpp's converter reads them.
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    # Say explicitly whether BOS/EOS are added: llama.cpp's defaults differ by tokenizer type.
    probe = tokenizer("a")["input_ids"]
    special.add_special_token.setdefault("bos", tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    special.add_special_token.setdefault("eos", tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
