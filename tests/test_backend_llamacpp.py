"""LlamaCppBackend on the tiny exported model: the same prompts, greedy replies and option scores
as TransformersBackend on the model it was exported from; prefix reuse in scoring; streaming,
sampling and limits."""

from __future__ import annotations

import os

import pytest

from econlm.backends import Backend, Decoding, get_backend
from econlm.backends.hf import TransformersBackend
from econlm.backends.llamacpp import MIN_RESUMED_ROWS, ROW_GROUP, LlamaCppBackend
from econlm.errors import UserError
from econlm.io import sha256_file
from gguf_models import tiny_gguf, tiny_model_dir

OPTIONS = ["Econometrics", "General Economics", "Theoretical Economics"]
CONVERSATIONS = [
    [{"role": "system", "content": "Classify the abstract."}, {"role": "user", "content": "We estimate a structural model of demand."}],
    [{"role": "user", "content": "Inflation expectations and monetary policy, 1990-2020."}],
]
GREEDY = Decoding(max_new_tokens=12)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def llama(root) -> LlamaCppBackend:
    return get_backend(f"llamacpp:{tiny_gguf(root, 'f16')}")


@pytest.fixture(scope="module")
def hf(root) -> TransformersBackend:
    return get_backend(f"transformers:{tiny_model_dir(root)}")


def test_follows_the_backend_protocol(llama, hf, root):
    assert isinstance(llama, LlamaCppBackend) and isinstance(llama, Backend)
    assert llama.has_chat_template
    info = llama.describe()
    assert info["kind"] == "gguf" and info["hash"] is None  # llama.cpp never converts the file to safetensors
    assert info["source_sha256"] == sha256_file(tiny_gguf(root, "f16"))
    # The file names the model it was exported from by that model's one content hash.
    assert info["exported_from_hash"] == hf.describe()["hash"] == hf.model_ref.hash


def test_prompts_and_greedy_replies_match_transformers(llama, hf):
    for conversation in CONVERSATIONS:
        assert llama.chat_prompt(conversation) == hf.chat_prompt(conversation)
    replies = llama.chat(CONVERSATIONS, GREEDY)
    assert replies == hf.chat(CONVERSATIONS, GREEDY)
    assert all(len(r) == 1 and r[0].strip() for r in replies)


def test_stream_pieces_join_to_the_reply(llama):
    pieces = list(llama.stream_chat(CONVERSATIONS[0], GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == llama.chat([CONVERSATIONS[0]], GREEDY)[0][0]


def test_option_scores_match_transformers(llama, hf):
    got, expected = llama.score_options(CONVERSATIONS, OPTIONS), hf.score_options(CONVERSATIONS, OPTIONS)
    for row_got, row_expected in zip(got, expected):
        assert row_got == pytest.approx(row_expected, abs=0.05)
        assert sorted(range(3), key=row_got.__getitem__) == sorted(range(3), key=row_expected.__getitem__)
    prefixes = ["Category of the paper:", "The answer is"]
    assert llama.score_text_options(prefixes, [f" {o}" for o in OPTIONS]) == [
        pytest.approx(row, abs=0.05) for row in hf.score_text_options(prefixes, [f" {o}" for o in OPTIONS])
    ]


WORKED_TURNS = [
    {"role": "system", "content": "Classify the abstract into one of three categories."},
    {"role": "user", "content": "We propose a consistent estimator for panel data with interactive fixed effects."},
    {"role": "assistant", "content": "Econometrics"},
    {"role": "user", "content": "Survey evidence on household savings and remittances in rural labour markets."},
    {"role": "assistant", "content": "General Economics"},
    {"role": "user", "content": "We characterise equilibria of a mechanism design problem with correlated types."},
    {"role": "assistant", "content": "Theoretical Economics"},
]
QUERIES = ["Instrumental variables for demand.", "Minimum wages and employment in Germany.", "A theory of matching markets."]


def test_scoring_reuses_the_evaluated_prefix_and_keeps_the_scores(root):
    """Few-shot prompts share their worked turns: the scoring context evaluates them once, not once
    per (example, option), and each option's log-prob is the one a fresh context gives that
    (example, option) alone."""
    spec = f"llamacpp:{tiny_gguf(root, 'f16')}"
    conversations = [[*WORKED_TURNS, {"role": "user", "content": query}] for query in QUERIES]
    cached = get_backend(spec)
    got = cached.score_options(conversations, OPTIONS)
    fresh_tokens = 0
    for conversation, row in zip(conversations, got):
        for option, logprob in zip(OPTIONS, row):
            fresh = get_backend(spec)
            assert fresh.score_options([conversation], [option])[0][0] == pytest.approx(logprob, abs=1e-4)
            fresh_tokens += fresh.scoring_evaluated_tokens
    prompts = [cached.tokenize(cached.chat_prompt(c)) for c in conversations]
    shared = len(os.path.commonprefix(prompts))
    assert shared > len(prompts[0]) // 2  # the worked turns are most of each prompt
    # Every (example, option) after the first finds the shared turns already evaluated, and keeps them up to a
    # multiple of ROW_GROUP that leaves MIN_RESUMED_ROWS to evaluate.
    kept = min(shared, min(map(len, prompts)) - MIN_RESUMED_ROWS) // ROW_GROUP * ROW_GROUP
    saved = (len(conversations) * len(OPTIONS) - 1) * kept
    assert cached.scoring_evaluated_tokens <= fresh_tokens - saved
    # Whatever the context held before (another prefix, another order), the scores stay the same.
    cached.score_text_options(["Category of the paper:"], [f" {o}" for o in OPTIONS])
    assert cached.score_options(conversations[::-1], OPTIONS) == [pytest.approx(row, abs=1e-4) for row in got[::-1]]


def test_sampling_is_seeded_and_returns_n_replies(llama):
    sampled = Decoding(max_new_tokens=8, temperature=1.0, num_return_sequences=3, seed=7)
    first = llama.chat([CONVERSATIONS[0]], sampled)
    assert len(first[0]) == 3 and len(set(first[0])) > 1
    assert llama.chat([CONVERSATIONS[0]], sampled) == first


def test_limits_and_bad_files_are_user_errors(root, tmp_path):
    small = get_backend(f"llamacpp:{tiny_gguf(root, 'f16')}", n_ctx=64)
    with pytest.raises(UserError, match="exceeds the context of 64 tokens"):
        small.chat([[{"role": "user", "content": "many words " * 40}]], GREEDY)
    with pytest.raises(UserError, match="not a model folder, .gguf file"):
        get_backend(f"llamacpp:{tmp_path / 'missing.gguf'}")
    with pytest.raises(UserError, match="runs a .gguf file or a packaged model"):
        get_backend(f"llamacpp:{tiny_model_dir(root)}")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="llama.cpp cannot load it"):
        get_backend(f"llamacpp:{broken}")
