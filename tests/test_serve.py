"""`econlm serve` on 127.0.0.1 over the tiny exported model: OpenAI-format chat completions (plain
and streamed), completions and model list; every bad request gets a 4xx JSON error and the server
keeps serving; a full wait queue is a 503, never a lost request; a bounded load test loses none."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from click.testing import CliRunner

from econlm.backends import Decoding, get_backend
from econlm.backends.llamacpp import LlamaCppBackend
from econlm.backends.openai import OpenAIBackend
from econlm.cli import cli
from econlm.serve import ServerLimits, create_app, load_test, serving
from fakes import FakeBackend
from gguf_models import tiny_gguf

LIMITS = ServerLimits(max_tokens=64, default_max_tokens=16, max_body_bytes=20_000, max_waiting=8)
HELLO = [{"role": "user", "content": "What is the marginal propensity to consume?"}]


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> LlamaCppBackend:
    return get_backend(f"llamacpp:{tiny_gguf(tmp_path_factory.mktemp('gguf'), 'f16')}")


@pytest.fixture(scope="module")
def base_url(backend):
    with serving(create_app(backend, "econlm", LIMITS)) as url:
        yield url


def chat(base_url: str, **body) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json={"model": "econlm", "messages": HELLO, **body}, timeout=60)


def assert_still_serving(base_url: str) -> None:
    response = chat(base_url, max_tokens=4, temperature=0)
    assert response.status_code == 200, response.text


def test_chat_completion_in_openai_format(base_url, backend):
    response = chat(base_url, max_tokens=10, temperature=0)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "econlm"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == backend.chat([HELLO], Decoding(max_new_tokens=10))[0][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 5 and body["usage"]["total_tokens"] > body["usage"]["prompt_tokens"]


def test_streaming_sends_deltas_then_done(base_url):
    body = {"model": "econlm", "messages": HELLO, "max_tokens": 10, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == chat(base_url, max_tokens=10, temperature=0).json()["choices"][0]["message"]["content"]


def test_models_and_completions(base_url, backend):
    models = httpx.get(f"{base_url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["econlm"]
    assert models["data"][0]["root"] == backend.model_ref.source  # the served file, as vLLM reports it
    response = httpx.post(f"{base_url}/v1/completions", json={"model": "econlm", "prompt": ["Economics is", "GDP"], "max_tokens": 5, "temperature": 0}, timeout=60)
    assert response.status_code == 200
    assert [c["index"] for c in response.json()["choices"]] == [0, 1]


def test_econlm_openai_backend_talks_to_it(base_url):
    client = OpenAIBackend("econlm", base_url=f"{base_url}/v1", max_retries=0)
    greedy = Decoding(max_new_tokens=8)
    reply = client.chat([HELLO], greedy)[0][0]
    assert reply and "".join(client.stream_chat(HELLO, greedy)) == reply
    assert client.model_ref is None and client.source_model.kind == "gguf"  # from the model list's root


def test_the_official_openai_client_gets_each_reply_tokens_log_probabilities(base_url, backend):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
    completion = client.chat.completions.create(model="econlm", messages=HELLO, max_tokens=8, temperature=0,
                                                logprobs=True, top_logprobs=2)
    choice = completion.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert all(len(t.top_logprobs) == 2 and bytes(t.bytes).decode() == t.token for t in content)
    [(text, tokens)] = backend.chat_with_logprobs(HELLO, Decoding(max_new_tokens=8), top_logprobs=2)
    assert choice.message.content == text
    # The second call reuses llama.cpp's cached prompt prefix, so its first token comes from a
    # forward pass over a different batch shape: equal to float32 rounding, not bit for bit.
    assert [t.logprob for t in content] == pytest.approx([t.logprob for t in tokens], abs=1e-4)
    plain = client.chat.completions.create(model="econlm", messages=HELLO, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_the_openai_backend_scores_options_through_it(base_url):
    """Classification through `openai:` (the first reply token's top log-probabilities), which an
    endpoint without `logprobs` refuses."""
    client = OpenAIBackend("econlm", base_url=f"{base_url}/v1", max_retries=0)
    [scores] = client.score_options([HELLO], ["Econometrics", "General Economics", "Theoretical Economics"])
    assert len(scores) == 3 and all(math.isfinite(s) and s <= 0.0 for s in scores)


def test_openai_backend_without_a_usable_model_list_has_no_source_model(tmp_path):
    """A list without `root` (OpenAI's own), one whose root is not on this machine, or no list at
    all: nothing local to read a training record from, and no error before the first request."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    entries = {"/v1/models": {"id": "econlm", "object": "model"},
               "/elsewhere/v1/models": {"id": "econlm", "root": str(tmp_path / "not-here")}}

    async def models(request):
        return JSONResponse({"object": "list", "data": [entries[request.url.path]]})

    async def missing(request):
        return PlainTextResponse("no such route", status_code=404)

    app = Starlette(routes=[Route("/v1/models", models), Route("/elsewhere/v1/models", models),
                            Route("/bare/v1/models", missing)])
    with serving(app) as url:
        for prefix in ("", "/elsewhere", "/bare"):
            assert OpenAIBackend("econlm", base_url=f"{url}{prefix}/v1", max_retries=0).source_model is None


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (json.dumps({"model": "econlm"}).encode(), 400, "messages"),
        (json.dumps({"model": "econlm", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "role"),
        (json.dumps({"model": "gpt-4", "messages": HELLO}).encode(), 404, "does not exist"),
        (json.dumps({"model": "econlm", "messages": HELLO, "max_tokens": 10_000}).encode(), 400, "over this server's limit"),
        (json.dumps({"model": "econlm", "messages": HELLO, "temperature": -1}).encode(), 400, "temperature"),
        (json.dumps({"model": "econlm", "messages": HELLO, "top_logprobs": 2}).encode(), 400, "needs logprobs=true"),
        (json.dumps({"model": "econlm", "messages": HELLO, "logprobs": True, "top_logprobs": 21}).encode(), 400, "top_logprobs"),
        (json.dumps({"model": "econlm", "messages": HELLO, "logprobs": True, "stream": True}).encode(), 400, "not supported with stream"),
        (json.dumps({"model": "econlm", "messages": [{"role": "user", "content": "x" * 30_000}]}).encode(), 413, "request body over"),
        (json.dumps({"model": "econlm", "messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 8}).encode(), 400, "exceeds the context"),
    ],
)
def test_bad_requests_get_json_4xx_and_the_server_keeps_serving(base_url, content, status, fragment):
    response = httpx.post(f"{base_url}/v1/chat/completions", content=content, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert_still_serving(base_url)


def test_unknown_route_and_method_are_json_errors(base_url):
    assert httpx.get(f"{base_url}/v1/nothing").json()["error"]["message"]
    response = httpx.get(f"{base_url}/v1/chat/completions")
    assert response.status_code == 405 and response.json()["error"]
    assert_still_serving(base_url)


class BlockingBackend(FakeBackend):
    """Holds every chat until released: makes the wait queue fill up deterministically."""

    name = "blocking"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Semaphore(0)

    def chat(self, conversations, decoding=Decoding()):
        self.started.release()
        self.release.wait(timeout=60)
        return [["ok"] for _ in conversations]

    def stream_chat(self, conversation, decoding=Decoding()):
        yield from self.chat([conversation], decoding)[0]


def test_full_queue_is_503_and_queued_requests_complete():
    backend = BlockingBackend()
    with serving(create_app(backend, "econlm", ServerLimits(max_waiting=2))) as url:
        results: dict[int, int] = {}

        def send(i: int) -> None:
            results[i] = chat(url, max_tokens=4).status_code

        running = threading.Thread(target=send, args=(0,))
        running.start()
        assert backend.started.acquire(timeout=30)  # request 0 holds the model
        queued = [threading.Thread(target=send, args=(i,)) for i in (1, 2)]
        for thread in queued:
            thread.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["waiting"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        rejected = chat(url, max_tokens=4)
        assert rejected.status_code == 503 and rejected.json()["error"]["code"] == "server_busy"
        backend.release.set()
        for thread in [running, *queued]:
            thread.join(timeout=60)
    assert results == {0: 200, 1: 200, 2: 200}


def test_bounded_load_test_loses_no_request(base_url, capsys):
    report = load_test(base_url, "econlm", ["What is inflation?", "Define GDP.", "What is a tariff?"], n_requests=200, concurrency=8, max_tokens=4)
    assert report["lost"] == 0 and report["ok"] == 200, report["failures"]
    with capsys.disabled():
        print(f"\nserve load test (tiny model): {report['ok']}/200 ok, p50 {report['p50_s']}s, p95 {report['p95_s']}s")


def test_help_names_the_default_bind_and_the_key():
    result = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output and "only with --api-key" in result.output
    assert "--api-key" in result.output and "ECONLM_API_KEY" in result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_takes_the_key_from_the_environment():
    """The real command, a key from $ECONLM_API_KEY; the backend is an `openai:` endpoint that is
    never called, so nothing loads. A half-sent body is one line of its log."""
    port = free_port()
    env = {**os.environ, "ECONLM_API_KEY": "env-key", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    server = subprocess.Popen([sys.executable, "-m", "econlm.cli", "serve", "--model", "openai:remote", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate()[0] if server.poll() is not None else "no start"
                time.sleep(0.1)
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer env-key"}, timeout=5).json()["data"][0]["id"] == "econlm"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as half:
            half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer env-key\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"model": "econlm"' + b" " * 22)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "warning" not in output and "env-key" not in output and "Traceback" not in output
    assert [line for line in output.splitlines() if "the client left" in line] == [
        "INFO:     POST /v1/chat/completions: the client left after 40 bytes of the request body; stopped, nothing sent"
    ]


def test_serving_beyond_this_machine_without_a_key_warns():
    """192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes, then the bind fails."""
    env = {**os.environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    env.pop("ECONLM_API_KEY", None)
    result = subprocess.run([sys.executable, "-m", "econlm.cli", "serve", "--model", "openai:remote", "--host", "192.0.2.1", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "warning: serving on 192.0.2.1 without --api-key" in result.stderr


def test_threads_reach_the_engine_and_a_remote_model_refuses_them(tiny_llama):
    import torch

    before = torch.get_num_threads()
    try:
        get_backend(f"transformers:{tiny_llama}", n_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    env = {**os.environ, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    result = subprocess.run([sys.executable, "-m", "econlm.cli", "serve", "--model", "openai:remote", "--threads", "1",
                             "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("--threads: openai:remote is served elsewhere; econlm computes nothing for it")
