"""Shared fixtures: an isolated ECONLM_HOME (persistent across local runs so model conversion is
cached, fresh on CI), the shared corpus, and small corpora the tests write themselves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "arxiv-econ"
SHARED_MMLU = REPO.parent / "shared" / "data" / "mmlu-econ"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("ECONLM_HOME", str(REPO / ".cache" / "test-home"))
os.environ.setdefault("ECONLM_DATA", str(SHARED_CORPUS))


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing at {SHARED_CORPUS} (CI runs with ../shared beside the repo)")
    return SHARED_CORPUS


def write_small_corpus(src: Path, dest: Path, per_split: dict[str, int]) -> Path:
    """Copy the first N papers of each split (balanced over categories) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in per_split.items():
        rows, per_cat = [], {}
        for line in (src / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            cat = obj["primary_category"]
            if per_cat.get(cat, 0) < -(-n // 3):
                per_cat[cat] = per_cat.get(cat, 0) + 1
                rows.append(line)
            if len(rows) >= n:
                break
        (dest / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def small_corpus(shared_corpus, tmp_path_factory) -> Path:
    """30 train / 12 validation / 12 test real papers, balanced over the three categories."""
    return write_small_corpus(
        shared_corpus, tmp_path_factory.mktemp("small-corpus"), {"train": 30, "validation": 12, "test": 12}
    )


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random LLaMA with the real SmolLM2 tokenizer (chat template included), saved as
    a plain HF folder: fast enough to run generation and scoring end to end in tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from econlm.models import ModelRef, load_tokenizer

    tokenizer = load_tokenizer(ModelRef.parse("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
