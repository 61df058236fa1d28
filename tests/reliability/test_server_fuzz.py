"""`econlm serve` as an attacker or a careless client meets it, on a real uvicorn server on
127.0.0.1 over a fast fake backend: every kind of bad request gets a 4xx with an OpenAI-style
JSON error and the next good request is served; a client that leaves stops the generation; a
half-sent body is one log line; an internal error tells the client nothing and the log
everything; the API key is checked; 200 requests at concurrency 8 lose none."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from econlm.backends import Decoding
from econlm.backends.openai import OpenAIBackend
from econlm.serve import ServerLimits, create_app, load_test, serving
from fakes import FakeBackend

LIMITS = ServerLimits(
    max_tokens=64, default_max_tokens=16, max_body_bytes=20_000, max_waiting=8, max_n=4,
    max_prompts=4, max_generated_tokens=128, max_prompt_tokens=500,
)
HELLO = [{"role": "user", "content": "What is the marginal propensity to consume?"}]
HOLD = "HOLD"  # a prompt holding this waits in the backend until the test releases it
FAIL = "FAIL"  # a conversation holding this makes the backend raise
SECRET = "/home/alice/private/credentials.txt"  # in the backend's exception text only


class ProbeBackend(FakeBackend):
    """FakeBackend that records what it generates, holds a generation until the test lets it
    go, and fails on cue, so a test can see where the server stopped."""

    name = "fake:probe"

    def __init__(self) -> None:
        super().__init__()
        self.completed: list[str] = []  # prompts completed, in order
        self.streamed = 0  # stream pieces produced
        self.holding = threading.Event()
        self.release = threading.Event()
        self.stream_closed = threading.Event()

    def _hold(self) -> None:
        self.holding.set()
        assert self.release.wait(timeout=60), "the test never released the backend"

    def complete(self, prompts, decoding=Decoding(), stop=()):
        if any(HOLD in prompt for prompt in prompts):
            self._hold()
        self.completed.extend(prompts)
        return super().complete(prompts, decoding, stop)

    def chat(self, conversations, decoding=Decoding()):
        if any(FAIL in c[-1]["content"] for c in conversations):
            raise RuntimeError(f"cannot read {SECRET}")
        return super().chat(conversations, decoding)

    def stream_chat(self, conversation, decoding=Decoding()):
        try:
            for i in range(decoding.max_new_tokens):
                if i == 1 and HOLD in conversation[-1]["content"]:
                    self._hold()
                self.streamed += 1
                yield f"w{i} "
        finally:
            self.stream_closed.set()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serving(create_app(ProbeBackend(), "econlm", LIMITS)) as url:
        yield url


@pytest.fixture
def probe() -> Iterator[tuple[ProbeBackend, str]]:
    """A server of the test's own, over a backend whose state the test reads."""
    backend = ProbeBackend()
    with serving(create_app(backend, "econlm", LIMITS)) as url:
        yield backend, url
        backend.release.set()


class ServerLog(logging.Handler):
    """The records econlm's server and uvicorn log while a test runs."""

    LOGGERS = ("econlm.serve", "uvicorn.error")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> ServerLog:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.INFO)
            logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(self._levels[name])

    def wait_for(self, fragment: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(fragment in r.getMessage() for r in self.records):
            assert time.monotonic() < deadline, f"nothing logged with {fragment!r}: {[r.getMessage() for r in self.records]}"
            time.sleep(0.02)


def client(base_url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=30)


def assert_good_request_served(base_url: str, api_key: str = "unused") -> None:
    reply = client(base_url, api_key).chat.completions.create(model="econlm", messages=HELLO, max_tokens=4, temperature=0)
    assert reply.choices[0].message.content


def assert_openai_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")


def raw_exchange(base_url: str, data: bytes) -> socket.socket:
    """A connection that has sent `data` as it is (no client library to fix it up)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(data)
    return conn


def post_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def chat_body(**fields) -> bytes:
    return json.dumps({"model": "econlm", "messages": HELLO, **fields}).encode()


def completion_body(**fields) -> bytes:
    return json.dumps({"model": "econlm", "prompt": "Economics is", **fields}).encode()


JSON = {"content-type": "application/json"}
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"

# (route, headers, body, status, fragment of the error message)
BAD_REQUESTS = {
    "malformed JSON": (CHAT, JSON, b"{not json", 400, "not valid JSON"),
    "empty body": (CHAT, JSON, b"", 400, "not valid JSON"),
    "not UTF-8": (CHAT, JSON, b'{"model": "\xff\xfe"}', 400, "not valid JSON"),
    "JSON array": (CHAT, JSON, b"[1, 2]", 400, "must be a JSON object"),
    "JSON number": (CHAT, JSON, b"42", 400, "must be a JSON object"),
    "nesting deeper than the parser": (CHAT, JSON, b"[" * 19_000, 400, "not valid JSON"),
    "integer of 5000 digits": (CHAT, JSON, b'{"model": "econlm", "max_tokens": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    "no messages": (CHAT, JSON, json.dumps({"model": "econlm"}).encode(), 400, "messages"),
    "empty messages": (CHAT, JSON, chat_body(messages=[]), 400, "messages"),
    "messages not a list": (CHAT, JSON, chat_body(messages={"role": "user", "content": "hi"}), 400, "messages"),
    "unknown role": (CHAT, JSON, chat_body(messages=[{"role": "wizard", "content": "hi"}]), 400, "role"),
    "content a number": (CHAT, JSON, chat_body(messages=[{"role": "user", "content": 7}]), 400, "content"),
    "image content part": (CHAT, JSON, chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), 400, "text content parts"),
    "no model": (CHAT, JSON, json.dumps({"messages": HELLO}).encode(), 400, "model"),
    "unknown model": (CHAT, JSON, json.dumps({"model": "gpt-4", "messages": HELLO}).encode(), 404, "does not exist"),
    "max_tokens beyond the limit": (CHAT, JSON, chat_body(max_tokens=10_000), 400, "over this server's limit"),
    "max_tokens zero": (CHAT, JSON, chat_body(max_tokens=0), 400, "max_tokens"),
    "max_tokens a word": (CHAT, JSON, chat_body(max_tokens="lots"), 400, "max_tokens"),
    "negative temperature": (CHAT, JSON, chat_body(temperature=-1), 400, "temperature"),
    "NaN temperature": (CHAT, JSON, b'{"model": "econlm", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature"),
    "top_p zero": (CHAT, JSON, chat_body(top_p=0), 400, "top_p"),
    "seed a word": (CHAT, JSON, chat_body(seed="lucky"), 400, "seed"),
    "n beyond the limit": (CHAT, JSON, chat_body(n=50), 400, "n must be at most"),
    "n x max_tokens beyond the generated-token limit": (CHAT, JSON, chat_body(n=4, max_tokens=64), 400, "tokens to generate"),
    "stream with n=2": (CHAT, JSON, chat_body(n=2, stream=True), 400, "n=1 only"),
    "stop for chat": (CHAT, JSON, chat_body(stop=["\n"]), 400, "stop sequences"),
    "prompt tokens beyond the limit": (CHAT, JSON, chat_body(messages=[{"role": "user", "content": "word " * 600}]), 400, "prompt(s) hold"),
    "body beyond the limit": (CHAT, JSON, chat_body(messages=[{"role": "user", "content": "x" * 30_000}]), 413, "request body over"),
    "text/plain (no CORS preflight)": (CHAT, {"content-type": "text/plain"}, chat_body(), 415, "application/json"),
    "form-encoded": (CHAT, {"content-type": "application/x-www-form-urlencoded"}, b"model=econlm", 415, "application/json"),
    "no content type": (CHAT, {"content-type": ""}, chat_body(), 415, "got none"),
    "prompt list beyond the limit": (COMPLETIONS, JSON, completion_body(prompt=["GDP"] * 200), 400, "prompts is over"),
    "empty prompt list": (COMPLETIONS, JSON, completion_body(prompt=[]), 400, "no prompt"),
    "token-id prompt": (COMPLETIONS, JSON, completion_body(prompt=[[1, 2, 3]]), 400, "prompt"),
    "prompts x max_tokens beyond the generated-token limit": (COMPLETIONS, JSON, completion_body(prompt=["a", "b", "c"], max_tokens=64), 400, "tokens to generate"),
    "prompt tokens beyond the limit (completions)": (COMPLETIONS, JSON, completion_body(prompt=["word " * 300, "word " * 300]), 400, "prompt(s) hold"),
    "streamed completions": (COMPLETIONS, JSON, completion_body(stream=True), 400, "chat completions only"),
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_bad_request_gets_a_json_4xx_and_the_server_keeps_serving(base_url, kind):
    route, headers, content, status, fragment = BAD_REQUESTS[kind]
    response = httpx.post(f"{base_url}{route}", content=content, headers=headers, timeout=30)
    assert_openai_error(response, status, fragment)
    assert_good_request_served(base_url)


def test_a_declared_length_beyond_the_limit_is_refused_before_the_body(base_url):
    conn = raw_exchange(base_url, post_head(CHAT, 10 * LIMITS.max_body_bytes))
    with conn, conn.makefile("rb") as reply:
        status_line = reply.readline()
        headers = {}
        while (line := reply.readline().strip()):
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        body = json.loads(reply.read(int(headers["content-length"])))
    assert status_line.startswith(b"HTTP/1.1 413") and "request body over" in body["error"]["message"]
    assert_good_request_served(base_url)


def test_a_chunked_body_beyond_the_limit_is_cut_off(base_url):
    def chunks():
        yield b'{"model": "econlm", "messages": [{"role": "user", "content": "'
        for _ in range(LIMITS.max_body_bytes // 1000 + 1):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(f"{base_url}{CHAT}", content=chunks(), headers=JSON, timeout=30)
    assert "content-length" not in response.request.headers  # sent chunked, no length declared
    assert_openai_error(response, 413, "request body over")
    assert_good_request_served(base_url)


@pytest.mark.parametrize(("method", "route", "status"), [("GET", CHAT, 405), ("DELETE", "/v1/models", 405), ("GET", "/v1/nothing", 404)])
def test_wrong_route_or_method_is_a_json_error(base_url, method, route, status):
    response = httpx.request(method, f"{base_url}{route}", timeout=30)
    assert response.status_code == status and response.json()["error"]["message"]
    assert_good_request_served(base_url)


def test_the_official_client_sees_bad_requests_as_its_own_errors(base_url):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(base_url).chat.completions.create(model="gpt-4", messages=HELLO)
    with pytest.raises(openai.BadRequestError, match="prompts is over"):
        client(base_url).completions.create(model="econlm", prompt=["GDP"] * 200, max_tokens=1)
    assert_good_request_served(base_url)


def test_a_client_that_leaves_stops_a_long_prompt_list(probe):
    backend, url = probe
    prompts = [f"{HOLD} prompt 0"] + [f"prompt {i}" for i in range(1, LIMITS.max_prompts)]
    body = completion_body(prompt=prompts, max_tokens=LIMITS.max_generated_tokens // len(prompts))
    conn = raw_exchange(url, post_head(COMPLETIONS, len(body)) + body)
    assert backend.holding.wait(timeout=30)
    conn.close()
    with ServerLog() as server_log:
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # the close is seen by now
        backend.release.set()
        server_log.wait_for("the client left after")
    assert_good_request_served(url)
    left_behind = [p for p in backend.completed if p.startswith(("prompt ", HOLD))]
    assert left_behind[0] == prompts[0] and len(left_behind) <= 2 < len(prompts), left_behind


def test_a_client_that_leaves_a_stream_stops_it(probe):
    backend, url = probe
    body = chat_body(messages=[{"role": "user", "content": f"{HOLD} tell me a long story"}], max_tokens=LIMITS.max_tokens, stream=True)
    conn = raw_exchange(url, post_head(CHAT, len(body)) + body)
    assert backend.holding.wait(timeout=30)
    assert conn.recv(4096).startswith(b"HTTP/1.1 200")  # the stream has begun
    conn.close()
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    backend.release.set()
    assert backend.stream_closed.wait(timeout=30)
    assert backend.streamed <= 3 < LIMITS.max_tokens
    assert_good_request_served(url)


def test_a_client_that_leaves_while_queued_is_not_generated_for(probe):
    backend, url = probe
    holding = completion_body(prompt=f"{HOLD} first", max_tokens=4)
    first = raw_exchange(url, post_head(COMPLETIONS, len(holding)) + holding)
    assert backend.holding.wait(timeout=30)
    queued_body = completion_body(prompt="queued prompt", max_tokens=4)
    queued = raw_exchange(url, post_head(COMPLETIONS, len(queued_body)) + queued_body)
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health", timeout=30).json()["waiting"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    queued.close()
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    backend.release.set()
    assert first.recv(4096).startswith(b"HTTP/1.1 200")
    first.close()
    assert_good_request_served(url)
    assert "queued prompt" not in backend.completed


def test_half_a_body_then_hanging_up_is_one_log_line(probe):
    _, url = probe
    with ServerLog() as server_log:
        conn = raw_exchange(url, post_head(CHAT, 1000) + chat_body()[:40])
        conn.close()
        server_log.wait_for("the client left after 40 bytes")
        assert_good_request_served(url)
    assert len(server_log.records) == 1, [r.getMessage() for r in server_log.records]
    assert server_log.records[0].exc_info is None and server_log.records[0].levelno < logging.WARNING


def test_an_internal_error_tells_the_client_nothing_and_the_log_everything(probe):
    _, url = probe
    with ServerLog() as server_log:
        response = httpx.post(f"{url}{CHAT}", json={"model": "econlm", "messages": [{"role": "user", "content": FAIL}]}, timeout=30)
        assert_openai_error(response, 500, "internal server error")
        assert SECRET not in response.text and "RuntimeError" not in response.text
        assert_good_request_served(url)
    [record] = [r for r in server_log.records if r.exc_info]
    error_id = response.json()["error"]["message"].split("id ")[1].split(";")[0]
    assert error_id in record.getMessage() and SECRET in str(record.exc_info[1])


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with serving(create_app(ProbeBackend(), "econlm", LIMITS, api_key="s3cret-key")) as url:
        yield url


@pytest.mark.parametrize(
    ("route", "authorization", "fragment"),
    [
        (CHAT, None, "no API key"),
        (CHAT, "Bearer wrong-key", "incorrect API key"),
        (CHAT, "Bearer s3cret-ke", "incorrect API key"),
        (CHAT, "Basic czNjcmV0LWtleQ==", "incorrect API key"),
        (CHAT, "s3cret-key", "incorrect API key"),
        (COMPLETIONS, None, "no API key"),
        ("/v1/models", "Bearer", "incorrect API key"),
    ],
)
def test_without_the_key_every_v1_route_is_a_401(keyed_url, route, authorization, fragment):
    headers = {**JSON, **({"authorization": authorization} if authorization is not None else {})}
    response = httpx.request("GET" if route == "/v1/models" else "POST", f"{keyed_url}{route}", content=chat_body(), headers=headers, timeout=30)
    assert_openai_error(response, 401, fragment)
    assert response.json()["error"]["code"] == "invalid_api_key" and "s3cret" not in response.text
    assert response.headers["www-authenticate"] == "Bearer"


def test_with_the_key_clients_are_served_and_health_stays_open(keyed_url, monkeypatch):
    assert httpx.get(f"{keyed_url}/health", timeout=30).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(keyed_url, api_key="wrong").chat.completions.create(model="econlm", messages=HELLO, max_tokens=4)
    assert_good_request_served(keyed_url, api_key="s3cret-key")
    assert [m.id for m in client(keyed_url, api_key="s3cret-key").models.list()] == ["econlm"]
    monkeypatch.setenv("ECONLM_API_KEY", "s3cret-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-for-openai-only")
    econlm_client = OpenAIBackend("econlm", base_url=f"{keyed_url}/v1", max_retries=0)
    assert econlm_client.chat([HELLO], Decoding(max_new_tokens=4))[0][0]


def test_load_test_loses_no_request(base_url, tmp_path, capsys):
    report = load_test(base_url, "econlm", ["What is inflation?", "Define GDP.", "What is a tariff?"], n_requests=200, concurrency=8, max_tokens=4)
    report["machine_load_1_5_15min"] = [round(x, 2) for x in os.getloadavg()]
    (tmp_path / "server-load-test.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nserver load test (fake backend): {report['ok']}/{report['requests']} ok at concurrency {report['concurrency']}, "
              f"p50 {report['p50_s']}s, p95 {report['p95_s']}s, load {report['machine_load_1_5_15min']}; {tmp_path / 'server-load-test.json'}")
    assert report["lost"] == 0 and report["ok"] == 200, report["failures"]
