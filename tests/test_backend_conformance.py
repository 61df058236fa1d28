"""Every backend through the `Backend` protocol, with the same checks: the fake, transformers on
the tiny random LLaMA, llama.cpp on its GGUF export, and openai against an OpenAI-compatible
server on 127.0.0.1. What an engine cannot do is one clear `UserError`, never an AttributeError."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from econlm.backends import Backend, Decoding, get_backend
from econlm.errors import UserError
from econlm.serve import token_logprobs
from fakes import FakeBackend
from gguf_models import tiny_gguf, tiny_model_dir

ENGINES = ["fake", "transformers", "llamacpp", "openai"]
# What an OpenAI chat endpoint keeps on the server: the prompt text, its tokens, plain-text prompts.
CANNOT = {"openai": {"chat_prompt", "count_tokens", "complete", "score_text_options"}}
OPTIONS = ["Econometrics", "General Economics", "Theoretical Economics"]
CONVERSATIONS = [
    [{"role": "system", "content": "Classify the abstract."}, {"role": "user", "content": "Abstract: We estimate a structural model of demand."}],
    [{"role": "user", "content": "Abstract: Inflation expectations and monetary policy, 1990-2020."}],
]
PROMPTS = ["Abstract: Prices rise.\nTitle: On Inflation\n\nAbstract: Wages fall.\nTitle:", "Abstract: Trade grows.\nTitle:"]
GREEDY = Decoding(max_new_tokens=8)
SAMPLED = Decoding(max_new_tokens=6, temperature=0.8, top_p=0.95, num_return_sequences=2, seed=3)


class FakeEndpoint:
    """/v1/chat/completions over `FakeBackend`: replies (with `n`), server-sent events, and
    the replies' token log-probabilities, as vLLM or OpenAI answer them."""

    def __init__(self) -> None:
        model = FakeBackend()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                decoding = Decoding(max_new_tokens=body["max_tokens"], temperature=body["temperature"],
                                    num_return_sequences=body.get("n", 1))
                if body.get("stream"):
                    events = [{"choices": [{"index": 0, "delta": {"content": piece}}]}
                              for piece in model.stream_chat(body["messages"], decoding)]
                    return self._send("text/event-stream",
                                      "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n")
                if body.get("logprobs"):
                    scored = model.chat_with_logprobs(body["messages"], decoding, body.get("top_logprobs") or 0)
                    replies, logprobs = [text for text, _ in scored], [{"content": token_logprobs(t)} for _, t in scored]
                else:
                    replies = model.chat([body["messages"]], decoding)[0]
                    logprobs = [None] * len(replies)
                choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp}
                           for i, (text, lp) in enumerate(zip(replies, logprobs))]
                self._send("application/json", json.dumps({"choices": choices}))

            def _send(self, content_type: str, text: str) -> None:
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def endpoint():
    server = FakeEndpoint()
    yield server
    server.close()


@pytest.fixture(scope="module", params=ENGINES)
def backend(request, tmp_path_factory, endpoint, monkeypatch_module) -> Backend:
    engine = request.param
    if engine == "fake":
        return FakeBackend()  # a test double: no engine spec names it
    if engine == "transformers":
        return get_backend(f"transformers:{tiny_model_dir(tmp_path_factory.mktemp('hf'))}", batch_size=2)
    if engine == "llamacpp":
        return get_backend(f"llamacpp:{tiny_gguf(tmp_path_factory.mktemp('gguf'), 'f16')}")
    monkeypatch_module.setenv("OPENAI_BASE_URL", endpoint.base_url)
    return get_backend("openai:fake-model")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def engine_of(backend: Backend) -> str:
    return backend.name.split(":", 1)[0]


def can(backend: Backend, member: str) -> bool:
    return member not in CANNOT.get(engine_of(backend), set())


def test_is_a_backend_and_describes_itself(backend):
    assert isinstance(backend, Backend)
    info = backend.describe()
    assert info["backend"] == backend.name and info["chat_template"] == backend.has_chat_template
    assert backend.has_chat_template  # every model here has one
    assert isinstance(backend.batch_size, int) and backend.batch_size >= 1
    assert backend.model_ref is None or backend.name.endswith(str(backend.model_ref))


def test_chat_returns_one_list_of_replies_per_conversation(backend):
    replies = backend.chat(CONVERSATIONS, GREEDY)
    assert len(replies) == len(CONVERSATIONS)
    assert all(len(row) == 1 and isinstance(row[0], str) for row in replies)
    assert backend.chat([], GREEDY) == []


def test_num_return_sequences_replies_per_conversation(backend):
    replies = backend.chat(CONVERSATIONS, SAMPLED)
    assert [len(row) for row in replies] == [2, 2]
    assert all(isinstance(text, str) for row in replies for text in row)


def test_stream_chat_joins_to_the_greedy_chat_reply(backend):
    pieces = list(backend.stream_chat(CONVERSATIONS[1], GREEDY))
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert "".join(pieces) == backend.chat([CONVERSATIONS[1]], GREEDY)[0][0]


def test_chat_with_logprobs_gives_the_chat_reply_token_by_token_with_the_likeliest_first(backend):
    [(text, tokens)] = backend.chat_with_logprobs(CONVERSATIONS[1], GREEDY, top_logprobs=3)
    assert text == backend.chat([CONVERSATIONS[1]], GREEDY)[0][0]
    assert tokens and "".join(t.token for t in tokens) == text
    for token in tokens:
        alternatives = [logprob for _, logprob in token.top]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert math.isfinite(token.logprob) and token.logprob <= 0.0
        assert token.logprob == pytest.approx(alternatives[0], abs=1e-4)  # greedy: the likeliest token
    sampled = backend.chat_with_logprobs(CONVERSATIONS[1], SAMPLED, top_logprobs=0)
    assert len(sampled) == 2 and all(token.top == () for _, tokens in sampled for token in tokens)


def test_score_options_one_finite_log_likelihood_per_option(backend):
    scores = backend.score_options(CONVERSATIONS, OPTIONS)
    assert [len(row) for row in scores] == [len(OPTIONS)] * len(CONVERSATIONS)
    assert all(math.isfinite(s) and s <= 0.0 for row in scores for s in row)


def test_score_options_and_chat_gives_what_the_two_calls_give(backend):
    scores, replies = backend.score_options_and_chat(CONVERSATIONS, OPTIONS, GREEDY)
    for row, expected in zip(scores, backend.score_options(CONVERSATIONS, OPTIONS), strict=True):
        assert row == pytest.approx(expected, abs=1e-5)
    assert replies == backend.chat(CONVERSATIONS, GREEDY)


def test_complete_and_score_text_options_or_one_clear_error(backend):
    if not can(backend, "complete"):
        for call in (lambda: backend.complete(PROMPTS, GREEDY), lambda: backend.score_text_options(PROMPTS, [" A"])):
            with pytest.raises(UserError) as error:
                call()
            assert backend.name in str(error.value) and "\n" not in str(error.value)
        return
    completions = backend.complete(PROMPTS, GREEDY, stop=["\n"])
    assert [len(row) for row in completions] == [1, 1]
    assert all(isinstance(text, str) and "\n" not in text for row in completions for text in row)
    assert [len(row) for row in backend.complete(PROMPTS, SAMPLED)] == [2, 2]
    scores = backend.score_text_options(PROMPTS, [" Inflation", " Wages"])
    assert [len(row) for row in scores] == [2, 2]
    assert all(math.isfinite(s) and s <= 0.0 for row in scores for s in row)


def test_chat_prompt_and_token_counts_or_one_clear_error(backend):
    assert backend.has_tokenizer == can(backend, "count_tokens")
    if not backend.has_tokenizer:
        for call in (lambda: backend.chat_prompt(CONVERSATIONS[0]), lambda: backend.count_tokens("demand")):
            with pytest.raises(UserError) as error:
                call()
            assert backend.name in str(error.value) and "\n" not in str(error.value)
        return
    prompt = backend.chat_prompt(CONVERSATIONS[0])
    assert "structural model of demand" in prompt
    assert 0 < backend.count_tokens("demand") < backend.count_tokens(prompt)
