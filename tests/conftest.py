"""Shared fixtures: an isolated ECONLM_HOME (persistent across local runs so model conversion is
cached, fresh on CI), the shared corpus, and small corpora the tests write themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "arxiv-econ"
SHARED_MMLU = REPO.parent / "shared" / "data" / "mmlu-econ"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("ECONLM_HOME", str(REPO / ".cache" / "test-home"))
os.environ.setdefault("ECONLM_DATA", str(SHARED_CORPUS))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty $ECONLM_HOME of the test's own (indexes, converted models)."""
    monkeypatch.setenv("ECONLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run_cli(*args: str, home) -> subprocess.CompletedProcess:
    """The real entry point (`python -m econlm.cli`) with $ECONLM_HOME set to `home`."""
    env = {**os.environ, "ECONLM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "econlm.cli", *args], capture_output=True, text=True, env=env)


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
def papers(small_corpus):
    """The small corpus's validation papers, for tests that encode or prompt real abstracts."""
    from econlm.data.corpus import load_papers

    return load_papers(small_corpus / "validation.jsonl").papers


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer (chat template included), which the tiny LLaMA shares."""
    from econlm.models import ModelRef, load_tokenizer

    return load_tokenizer(ModelRef.parse("smollm2-135m-instruct"))


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


@pytest.fixture(scope="session")
def qwen2_tokenizer():
    """The real Qwen2.5 tokenizer (chat template included), from the packaged 0.5B model: its converted
    folder when a run already made it (about 1 s), else read from its GGUF (seconds; converting the
    model would take minutes)."""
    from transformers import AutoTokenizer

    from econlm.models import CONVERTED_MARKER, REGISTRY

    entry = REGISTRY["qwen2.5-coder-0.5b-instruct"]
    if (entry.converted_dir() / CONVERTED_MARKER).is_file():
        return AutoTokenizer.from_pretrained(entry.converted_dir())
    gguf = entry.gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="session")
def tiny_qwen2(qwen2_tokenizer, tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 (q/k/v biases, untied output head like the converted Qwen2.5-Coder-0.5B)
    with the real Qwen2.5 tokenizer, saved as a plain HF folder. Its weights are large (std 0.2) and
    rounded to float16 for the reason tests/gguf_models.py gives: its GGUF export is compared with it
    logit for logit."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = qwen2_tokenizer
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.2,
        rope_theta=1_000_000.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.2)  # initialised to zero: the export of biases would go unchecked
            param.copy_(param.half().float())
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
