"""TransformersBackend on a tiny random LLaMA: scoring matches a manual forward pass, and batching
with left padding changes neither scores nor greedy generations."""

from __future__ import annotations

import pytest
import torch

from econlm.backends import Backend, Decoding, get_backend
from econlm.backends.hf import TransformersBackend
from econlm.errors import UserError

OPTIONS = ["Econometrics", "General Economics", "Theoretical Economics"]


def conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Classify the abstract."}, {"role": "user", "content": text}]


# Different lengths, so that a batch needs padding.
CONVERSATIONS = [
    conversation("We estimate a structural model of demand."),
    conversation("A short one."),
    conversation("Inflation expectations, monetary policy and the labour market in a long abstract " * 3),
]


@pytest.fixture(scope="module")
def backend(tiny_llama) -> TransformersBackend:
    return get_backend(f"transformers:{tiny_llama}", batch_size=3)


def manual_option_logprob(backend: TransformersBackend, messages, option: str) -> float:
    """Sum log-prob of the reply tokens from one unpadded forward pass over prompt + reply."""
    tok = backend.tokenizer
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*messages, {"role": "assistant", "content": option}], tokenize=False).rstrip()
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = backend.model(torch.tensor([full_ids])).logits[0].log_softmax(-1)
    return sum(logprobs[t - 1, full_ids[t]].item() for t in range(len(prompt_ids), len(full_ids)))


def test_backend_satisfies_the_protocol(backend):
    assert isinstance(backend, Backend)
    assert backend.name == f"transformers:{backend.model_ref}"
    assert isinstance(get_backend(f"transformers:{backend.model_ref}"), TransformersBackend)


def test_score_options_equals_manual_forward_pass(backend):
    scores = backend.score_options(CONVERSATIONS, OPTIONS)
    assert len(scores) == len(CONVERSATIONS) and all(len(row) == len(OPTIONS) for row in scores)
    for messages, row in zip(CONVERSATIONS, scores):
        expected = [manual_option_logprob(backend, messages, option) for option in OPTIONS]
        assert row == pytest.approx(expected, abs=1e-4)


def test_the_scored_continuation_is_the_option_and_end_of_turn(backend):
    prompt = backend.chat_prompt(CONVERSATIONS[0])
    full = backend.tokenizer.apply_chat_template(
        [*CONVERSATIONS[0], {"role": "assistant", "content": "Econometrics"}], tokenize=False
    ).rstrip()
    prompt_ids = backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    continuation = backend._continuation_ids(prompt, full, prompt_ids, add_special_tokens=False)
    assert backend.tokenizer.decode(continuation) == "Econometrics<|im_end|>"


def test_batch_size_does_not_change_scores(backend, tiny_llama):
    one_at_a_time = get_backend(str(tiny_llama), batch_size=1)
    batched = backend.score_options(CONVERSATIONS, OPTIONS)
    single = one_at_a_time.score_options(CONVERSATIONS, OPTIONS)
    for a, b in zip(batched, single):
        assert a == pytest.approx(b, abs=1e-4)


def test_score_text_options_equals_manual_forward_pass(backend):
    prefixes = ["Abstract: prices rise.\nCategory:", "Abstract: a theorem about games with many players.\nCategory:"]
    options = [" Econometrics", " Theoretical Economics"]
    scores = backend.score_text_options(prefixes, options)
    tok = backend.tokenizer
    for prefix, row in zip(prefixes, scores):
        for option, score in zip(options, row):
            prefix_ids = tok(prefix)["input_ids"]
            full_ids = tok(prefix + option)["input_ids"]
            assert full_ids[: len(prefix_ids)] == prefix_ids
            with torch.no_grad():
                logprobs = backend.model(torch.tensor([full_ids])).logits[0].log_softmax(-1)
            expected = sum(logprobs[t - 1, full_ids[t]].item() for t in range(len(prefix_ids), len(full_ids)))
            assert score == pytest.approx(expected, abs=1e-4)


def test_batched_greedy_generation_equals_one_at_a_time(backend, tiny_llama):
    decoding = Decoding(max_new_tokens=8)
    batched = backend.chat(CONVERSATIONS, decoding)
    single = [get_backend(str(tiny_llama), batch_size=1).chat([c], decoding)[0] for c in CONVERSATIONS[:2]]
    assert batched[:2] == single
    assert all(len(replies) == 1 and isinstance(replies[0], str) for replies in batched)


def test_score_options_and_chat_equals_the_two_calls(backend):
    """The reply generated from the scoring pass's cache (a padded batch of three lengths) is the
    reply `chat` generates from scratch, and the scores are `score_options`'."""
    decoding = Decoding(max_new_tokens=8)
    scores, replies = backend.score_options_and_chat(CONVERSATIONS, OPTIONS, decoding)
    assert replies == backend.chat(CONVERSATIONS, decoding)
    assert scores == backend.score_options(CONVERSATIONS, OPTIONS)
    sampled = Decoding(max_new_tokens=6, temperature=1.0, seed=7)
    assert backend.score_options_and_chat(CONVERSATIONS, OPTIONS, sampled)[1] == backend.chat(CONVERSATIONS, sampled)
    with pytest.raises(ValueError):
        backend.score_options_and_chat(CONVERSATIONS, OPTIONS, Decoding(num_return_sequences=2, temperature=1.0))


def test_sampling_returns_the_requested_number_of_sequences_reproducibly(backend):
    decoding = Decoding(max_new_tokens=6, temperature=1.0, num_return_sequences=3, seed=7)
    first = backend.chat(CONVERSATIONS[:2], decoding)
    assert [len(r) for r in first] == [3, 3]
    assert backend.chat(CONVERSATIONS[:2], decoding) == first


def test_stream_chat_yields_the_same_text_as_chat(backend):
    decoding = Decoding(max_new_tokens=8)
    streamed = "".join(backend.stream_chat(CONVERSATIONS[0], decoding))
    assert streamed == backend.chat([CONVERSATIONS[0]], decoding)[0][0]


def test_complete_cuts_at_the_stop_string(backend):
    full = backend.complete(["Title:"], Decoding(max_new_tokens=12))[0][0]
    assert len(full) >= 5
    stop = full[3:5]
    cut = backend.complete(["Title:"], Decoding(max_new_tokens=12), stop=[stop])[0][0]
    assert stop not in cut and full.startswith(cut)


def test_chat_needs_a_chat_template(backend):
    template = backend.tokenizer.chat_template
    backend.tokenizer.chat_template = None
    try:
        with pytest.raises(UserError, match="no chat template"):
            backend.chat(CONVERSATIONS[:1])
    finally:
        backend.tokenizer.chat_template = template


def test_describe_records_hashes(backend):
    info = backend.describe()
    assert info["kind"] == "hf-folder" and info["base"] is None and info["source_sha256"] is None
    assert len(info["hash"]) == 64 and info["hash"] == backend.model_ref.hash
