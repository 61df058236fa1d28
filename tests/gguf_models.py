"""A tiny random LLaMA and its GGUF exports, shared by the export, llama.cpp-backend and server
tests (built once per test session).

Unlike conftest's `tiny_llama`, its weights are large (std 0.2) and already rounded to float16:
random weights at the usual std 0.02 give near-uniform logits whose argmax flips on any rounding,
and a rounded model leaves llama.cpp's f16 arithmetic as the only difference from transformers.
"""

from __future__ import annotations

from pathlib import Path

_built: dict[str, Path] = {}


def tiny_model_dir(root: Path) -> Path:
    if "hf" not in _built:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from econlm.models import ModelRef, load_tokenizer

        tokenizer = load_tokenizer(ModelRef.parse("smollm2-135m-instruct"))
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
        folder = root / "tiny-llama-hf"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        _built["hf"] = folder
    return _built["hf"]


def tiny_gguf(root: Path, quant: str) -> Path:
    """The tiny model exported with `econlm.export.export_gguf` at `quant`."""
    if quant not in _built:
        from econlm.export import export_gguf
        from econlm.models import ModelRef

        path = root / f"tiny.{quant}.gguf"
        export_gguf(ModelRef.parse(tiny_model_dir(root)), path, quant, progress=False)
        _built[quant] = path
    return _built[quant]


def prompt_ids(tokenizer, conversation) -> list[int]:
    """Token ids of a chat prompt as training and inference render it."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hf_logits(model, ids: list[int]):
    """transformers' logits for every position of `ids` (float32 numpy)."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(path, ids: list[int]):
    """llama.cpp's logits for every position of `ids`, from the GGUF at `path`."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)])
    llm.close()
    return logits
