"""OpenAIBackend against a scripted OpenAI-compatible server on 127.0.0.1 (no network)."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from econlm.backends import Backend, Decoding, get_backend
from econlm.backends.openai import DEFAULT_BASE_URL, OpenAIBackend, _key_from_environment
from econlm.errors import UserError

CONVERSATION = [{"role": "user", "content": "What is a Giffen good?"}]


class ScriptedServer:
    """Answers POST /v1/chat/completions from a script: each entry is used once, the last repeats.

    An entry is a function(body) -> (status, headers, payload) where payload is a dict (JSON),
    a list of SSE `data:` strings, or a number of seconds to stall before answering 200.
    """

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    step = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, payload = step(body)
                    if isinstance(payload, (int, float)):
                        time.sleep(payload)
                        payload = completion("late")
                finally:
                    # Count a request as in flight until its reply is ready, not until it is
                    # written: once written, the client may rightly send its next request.
                    with server.lock:
                        server.in_flight -= 1
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    if isinstance(payload, list):
                        self.send_header("Content-Type", "text/event-stream")
                        self.end_headers()
                        for event in payload:
                            self.wfile.write(f"data: {event}\n\n".encode())
                            self.wfile.flush()
                    else:
                        data = json.dumps(payload).encode()
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(*texts):
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": t}} for i, t in enumerate(texts)]}


def ok(*texts):
    return lambda body: (200, {}, completion(*texts))


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def backend_for(server, **options):
    return OpenAIBackend("test-model", base_url=server.base_url, backoff=0.01, **options)


def test_chat_sends_the_conversation_and_decoding(serve):
    server = serve(ok("A good whose demand rises with its price."))
    backend = backend_for(server, api_key="sk-test")
    assert isinstance(backend, Backend) and backend.name == "openai:test-model"
    assert backend.chat([CONVERSATION], Decoding(max_new_tokens=30)) == [["A good whose demand rises with its price."]]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["messages"] == CONVERSATION and request["model"] == "test-model"
    assert request["max_tokens"] == 30 and request["temperature"] == 0.0 and "n" not in request


def test_spec_string_and_environment(serve, monkeypatch):
    server = serve(ok("hi"))
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ECONLM_API_KEY", raising=False)
    backend = get_backend("openai:served-model")
    assert backend.chat([CONVERSATION]) == [["hi"]]
    assert server.requests[0]["model"] == "served-model" and server.requests[0]["auth"] is None


@pytest.mark.parametrize(
    ("environment", "sent"),
    [
        ({"ECONLM_API_KEY": "econlm-key", "OPENAI_API_KEY": "sk-openai"}, "Bearer econlm-key"),
        ({"OPENAI_API_KEY": "sk-openai"}, "Bearer sk-openai"),
        ({"ECONLM_API_KEY": "econlm-key"}, "Bearer econlm-key"),
    ],
)
def test_key_from_the_environment_for_a_local_server(serve, monkeypatch, environment, sent):
    server = serve(ok("hi"))
    for name in ("ECONLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    backend_for(server).chat([CONVERSATION])
    assert server.requests[0]["auth"] == sent


def test_the_econlm_server_key_is_never_sent_to_openai(monkeypatch):
    monkeypatch.setenv("ECONLM_API_KEY", "econlm-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert _key_from_environment(DEFAULT_BASE_URL) == "sk-openai"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert _key_from_environment(DEFAULT_BASE_URL) is None


def test_servers_that_ignore_n_are_asked_again(serve):
    server = serve(ok("first"), ok("second"), ok("third"))
    replies = backend_for(server).chat([CONVERSATION], Decoding(num_return_sequences=3, temperature=0.8))
    assert replies == [["first", "second", "third"]]
    assert [r.get("n") for r in server.requests] == [3, 2, None]
    assert len({r["seed"] for r in server.requests}) == 3


def test_retries_on_429_and_5xx_then_succeeds(serve):
    server = serve(
        lambda b: (429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}),
        lambda b: (503, {}, {"error": "overloaded"}),
        ok("done"),
    )
    assert backend_for(server).chat([CONVERSATION]) == [["done"]]
    assert len(server.requests) == 3


def test_retries_are_bounded(serve):
    server = serve(lambda b: (500, {}, {"error": {"message": "boom"}}))
    with pytest.raises(UserError, match=r"HTTP 500 after 3 attempts: boom"):
        backend_for(server, max_retries=2).chat([CONVERSATION])
    assert len(server.requests) == 3


def test_client_errors_are_not_retried_and_say_what_to_fix(serve):
    server = serve(lambda b: (401, {}, {"error": {"message": "invalid key"}}))
    with pytest.raises(UserError, match=r"HTTP 401: invalid key \(check ECONLM_API_KEY or OPENAI_API_KEY\)"):
        backend_for(server).chat([CONVERSATION])
    assert len(server.requests) == 1


def test_timeout_and_unreachable_endpoint(serve):
    server = serve(lambda b: (200, {}, 2.0))
    with pytest.raises(UserError, match="cannot reach .* after 2 attempt"):
        backend_for(server, timeout=0.2, max_retries=1).chat([CONVERSATION])
    server.close()
    with pytest.raises(UserError, match="cannot reach the OpenAI-compatible endpoint"):
        backend_for(server, max_retries=0).chat([CONVERSATION])


def test_concurrency_is_bounded(serve):
    def slow(body):
        return 200, {}, 0.4  # long enough that both workers are surely in flight at once, even under load

    server = serve(slow)
    replies = backend_for(server, concurrency=2).chat([CONVERSATION] * 6)
    assert replies == [["late"]] * 6
    assert server.max_in_flight == 2


def test_stream_chat_yields_pieces(serve):
    events = [json.dumps({"choices": [{"delta": {"content": piece}}]}) for piece in ["Dem", "and ", "curves"]]
    server = serve(lambda b: (200, {}, [json.dumps({"choices": [{"delta": {"role": "assistant"}}]}), *events, "[DONE]"]))
    pieces = list(backend_for(server).stream_chat(CONVERSATION))
    assert pieces == ["Dem", "and ", "curves"] and server.requests[0]["stream"] is True


def test_stream_retries_before_the_first_byte(serve):
    events = [json.dumps({"choices": [{"delta": {"content": "ok"}}]}), "[DONE]"]
    server = serve(lambda b: (502, {}, {"error": "bad gateway"}), lambda b: (200, {}, events))
    assert list(backend_for(server).stream_chat(CONVERSATION)) == ["ok"]


def logprob_reply(top):
    return {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [
        {"token": top[0][0], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}
    ]}}]}


def test_score_options_from_first_token_logprobs(serve):
    top = [("Theor", -0.2), ("Econ", -2.0), ("E", -3.0), (" General", -2.5), ("In", -4.0)]
    server = serve(lambda b: (200, {}, logprob_reply(top)))
    options = ["Econometrics", "General Economics", "Theoretical Economics"]
    [scores] = backend_for(server).score_options([CONVERSATION], options)
    request = server.requests[0]
    assert request["logprobs"] is True and request["top_logprobs"] == 20 and request["max_tokens"] == 1
    # "Econ" and "E" both begin "Econometrics": their probabilities add up.
    assert scores[0] == pytest.approx(math.log(math.exp(-2.0) + math.exp(-3.0)))
    assert scores[1] == pytest.approx(-2.5) and scores[2] == pytest.approx(-0.2)


def test_option_outside_the_top_tokens_gets_an_upper_bound(serve):
    server = serve(lambda b: (200, {}, logprob_reply([("Econ", -0.1), ("General", -3.0)])))
    [scores] = backend_for(server).score_options([CONVERSATION], ["Econometrics", "Theoretical Economics"])
    assert scores == [pytest.approx(-0.1), pytest.approx(-3.0)]


def test_score_options_without_logprobs_is_a_clear_error(serve):
    server = serve(ok("Econometrics"))
    with pytest.raises(UserError, match="returned no log-probabilities, so it cannot score options"):
        backend_for(server).score_options([CONVERSATION], ["Econometrics", "General Economics"])
