"""An OpenAI-compatible HTTP API over one econlm backend, so the app, notebooks and other tools
(the `openai` client, LangChain, curl) talk to one server.

    POST /v1/chat/completions   (stream=true: server-sent events, `data: {...}` ... `data: [DONE]`;
                                 logprobs=true, top_logprobs=K: each reply token's log-probability)
    POST /v1/completions        plain-text prompts (base models)
    GET  /v1/models             the one model this server holds
    GET  /health

Built on Starlette + uvicorn: a small, well-kept ASGI stack that econlm already depends on
through Streamlit (extra `[app]`); FastAPI would add only schema generation. Requests are
validated with pydantic. One model serves one request at a time (neither llama.cpp's `Llama` nor
a transformers model is safe to share between threads); further requests wait in a bounded queue
and get 503 when it is full. Every bad request gets a 4xx with an OpenAI-style JSON error and the
server keeps serving.

Because one request holds the model, what a request may cost is capped (prompts per request,
generated and prompt tokens per request) and a request whose client has left stops generating at
the next prompt batch or stream chunk. POST bodies must be `application/json`, so a web page
cannot post to the server without a CORS preflight (which the server never grants). With an API
key, every route but /health needs `Authorization: Bearer KEY`.

For a GPU cluster, serve the base model with the LoRA adapter in vLLM instead (docs/serving.md):
the same clients work against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from econlm.backends import Backend, Decoding, EngineSpec, TokenLogprob, get_backend
from econlm.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; anything beyond is a 4xx, never a crash."""

    max_tokens: int = 512  # largest max_tokens a request may set
    default_max_tokens: int = 256  # when a chat request sets none
    max_body_bytes: int = 1_000_000
    max_waiting: int = 64  # requests queued behind the one being generated; more get 503
    max_n: int = 4  # choices per request
    max_prompts: int = 16  # prompts in one /v1/completions request
    max_generated_tokens: int = 2048  # prompts x n x max_tokens per request (= max_n x max_tokens)
    max_prompt_tokens: int = 8192  # prompt tokens over all of a request's prompts


# ---------------------------------------------------------------------------- request bodies


class _Request(BaseModel):
    # OpenAI clients send fields econlm has no use for (user, presence_penalty, ...): ignore them.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name for max_tokens
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    seed: int | None = None


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    @field_validator("content")
    @classmethod
    def _text_only(cls, v: str | list[dict[str, Any]]) -> str:
        """OpenAI's content-part lists are accepted when every part is text."""
        if isinstance(v, str):
            return v
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in v):
            raise ValueError("only text content parts are supported")
        return "".join(part["text"] for part in v)


class ChatRequest(_Request):
    messages: list[_ChatMessage] = Field(min_length=1)
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)  # OpenAI's range


class CompletionRequest(_Request):
    prompt: str | list[str]
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions


class RequestError(Exception):
    """A request the server refuses: HTTP status + OpenAI error body."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


class ClientGone(Exception):
    """The client hung up before its reply was ready: nothing is sent, generation stops."""


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------------------- the app


class ModelServer:
    """One backend behind the OpenAI routes, with a model lock and a bounded wait queue."""

    def __init__(self, backend: Backend, model_name: str, limits: ServerLimits = ServerLimits()):
        self.backend = backend
        self.model_name = model_name
        self.limits = limits
        self.created = int(time.time())
        self._model_lock: asyncio.Lock | None = None  # created inside the server's event loop
        self._waiting = 0

    # -- request parsing

    async def _read_json(self, request) -> Any:
        from starlette.requests import ClientDisconnect

        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise RequestError(415, f"Content-Type must be application/json (got {media_type or 'none'})", code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestError(413, f"request body over {self.limits.max_body_bytes} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.limits.max_body_bytes:
                    raise RequestError(413, f"request body over {self.limits.max_body_bytes} bytes")
        except ClientDisconnect:
            raise ClientGone(f"after {len(body)} bytes of the request body") from None
        try:
            return json.loads(body)
        # ValueError: also bad UTF-8 and integers over Python's 4300-digit limit; RecursionError: nesting.
        except (ValueError, RecursionError) as exc:
            raise RequestError(400, f"request body is not valid JSON ({exc})") from None

    async def _parse(self, request, model_cls: type[_Request]) -> _Request:
        payload = await self._read_json(request)
        if not isinstance(payload, dict):
            raise RequestError(400, "request body must be a JSON object")
        try:
            parsed = model_cls.model_validate(payload)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"])
            raise RequestError(400, f"{param}: {err['msg']}", param=param) from None
        if parsed.model != self.model_name:
            raise RequestError(404, f"the model '{parsed.model}' does not exist (this server has '{self.model_name}')", code="model_not_found", param="model")
        if parsed.n > self.limits.max_n:
            raise RequestError(400, f"n must be at most {self.limits.max_n}", param="n")
        return parsed

    def _decoding(self, req: _Request, default_max: int) -> Decoding:
        max_tokens = req.max_completion_tokens or req.max_tokens or default_max
        if max_tokens > self.limits.max_tokens:
            raise RequestError(400, f"max_tokens {max_tokens} is over this server's limit of {self.limits.max_tokens}", code="max_tokens_exceeded", param="max_tokens")
        return Decoding(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            num_return_sequences=req.n,
            seed=req.seed if req.seed is not None else 0,
        )

    # -- the model lock and wait queue

    def _check_capacity(self) -> None:
        if self._waiting >= self.limits.max_waiting:
            raise RequestError(503, "server busy: too many requests waiting, retry later", code="server_busy")

    @contextlib.asynccontextmanager
    async def _model_turn(self) -> AsyncIterator[None]:
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        self._check_capacity()
        self._waiting += 1
        try:
            await self._model_lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._model_lock.release()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking backend call in a worker thread (inside the caller's model turn); a
        UserError from the backend (e.g. prompt longer than the context) is the caller's 400."""
        from starlette.concurrency import run_in_threadpool

        try:
            return await run_in_threadpool(fn, *args)
        except UserError as exc:
            raise RequestError(400, str(exc), code="invalid_request") from None

    @staticmethod
    async def _ensure_connected(request, when: str) -> None:
        if await request.is_disconnected():
            raise ClientGone(when)

    # -- what one request may cost

    def _check_generated_tokens(self, n_prompts: int, decoding: Decoding) -> None:
        wanted = n_prompts * decoding.num_return_sequences * decoding.max_new_tokens
        if wanted > self.limits.max_generated_tokens:
            raise RequestError(
                400,
                f"{n_prompts} prompt(s) x n={decoding.num_return_sequences} x max_tokens={decoding.max_new_tokens} = {wanted} "
                f"tokens to generate is over this server's limit of {self.limits.max_generated_tokens} per request",
                code="request_too_large", param="max_tokens",
            )

    def _check_prompt_tokens(self, render: Callable[[], list[str]]) -> None:
        """Called in a worker thread during the model turn: the tokenizer is no safer to share
        between threads than the model. Skipped where the backend has no tokenizer here."""
        if not self.backend.has_tokenizer:
            return
        total = sum(self.backend.count_tokens(text) for text in render())
        if total > self.limits.max_prompt_tokens:
            raise RequestError(400, f"the prompt(s) hold {total} tokens, over this server's limit of {self.limits.max_prompt_tokens} per request", code="request_too_large", param="prompt")

    # -- responses

    def _usage(self, prompt: Callable[[], str], texts: list[str]) -> dict[str, int] | None:
        """Token counts by the backend's own tokenizer; None (no `usage`) where it has none here,
        and then the prompt is not rendered either."""
        if not self.backend.has_tokenizer:
            return None
        prompt_tokens = self.backend.count_tokens(prompt())
        completion_tokens = sum(self.backend.count_tokens(t) for t in texts)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}

    def _finish_reason(self, text: str, max_tokens: int) -> str:
        """"length" when the reply used its whole token budget (re-counted from the text)."""
        if self.backend.has_tokenizer and self.backend.count_tokens(text) >= max_tokens:
            return "length"
        return "stop"

    async def chat_completions(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        req = await self._parse(request, ChatRequest)
        decoding = self._decoding(req, self.limits.default_max_tokens)
        self._check_generated_tokens(1, decoding)
        if req.stop:
            raise RequestError(400, "stop sequences are not supported for chat completions", param="stop")
        if req.top_logprobs is not None and not req.logprobs:
            raise RequestError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        conversation = [{"role": m.role, "content": m.content} for m in req.messages]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            if req.n != 1:
                raise RequestError(400, "stream=true supports n=1 only", param="n")
            if req.logprobs:
                raise RequestError(400, "logprobs are not supported with stream=true", param="logprobs")
            self._check_capacity()  # a full queue is a 503 before the stream starts
            return StreamingResponse(self._chat_events(completion_id, conversation, decoding), media_type="text/event-stream")
        async with self._model_turn():
            await self._ensure_connected(request, "while its request waited for the model")
            await self._call(self._check_prompt_tokens, lambda: [self.backend.chat_prompt(conversation)])
            if req.logprobs:
                scored = await self._call(self.backend.chat_with_logprobs, conversation, decoding, req.top_logprobs or 0)
                replies, logprobs = [text for text, _ in scored], [{"content": token_logprobs(tokens)} for _, tokens in scored]
            else:
                replies = (await self._call(self.backend.chat, [conversation], decoding))[0]
                logprobs = [None] * len(replies)
            # Token counts too hold the model turn: a tokenizer is no safer to share than the model.
            body = {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": choice_logprobs,
                     "finish_reason": self._finish_reason(text, decoding.max_new_tokens)}
                    for i, (text, choice_logprobs) in enumerate(zip(replies, logprobs))
                ],
            }
            if (usage := self._usage(lambda: self.backend.chat_prompt(conversation), replies)) is not None:
                body["usage"] = usage
            return JSONResponse(body)

    async def _chat_events(self, completion_id: str, conversation: list[dict[str, str]], decoding: Decoding) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format; the model turn lasts the whole stream.
        Starlette cancels this generator when the client disconnects (between chunks)."""
        import anyio
        from starlette.concurrency import run_in_threadpool

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        try:
            async with self._model_turn():
                await self._call(self._check_prompt_tokens, lambda: [self.backend.chat_prompt(conversation)])
                pieces = self.backend.stream_chat(conversation, decoding)
                text = ""
                try:
                    yield chunk({"role": "assistant", "content": ""})
                    while (piece := await run_in_threadpool(next, pieces, None)) is not None:
                        text += piece
                        yield chunk({"content": piece})
                finally:
                    # Closing the generator releases the backend (also when the client went away).
                    with anyio.CancelScope(shield=True):
                        await run_in_threadpool(pieces.close)
                yield chunk({}, self._finish_reason(text, decoding.max_new_tokens))
        except (RequestError, UserError) as exc:
            # Headers are already sent: report the error as an event, as OpenAI does.
            message, code = (exc.message, exc.code) if isinstance(exc, RequestError) else (str(exc), "invalid_request")
            yield f"data: {json.dumps(error_body(message, 'invalid_request_error', code))}\n\n"
        yield "data: [DONE]\n\n"

    async def completions(self, request):
        from starlette.responses import JSONResponse

        req = await self._parse(request, CompletionRequest)
        if req.stream:
            raise RequestError(400, "stream=true is supported for chat completions only", param="stream")
        decoding = self._decoding(req, 16)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise RequestError(400, "prompt: the list holds no prompt", param="prompt")
        if len(prompts) > self.limits.max_prompts:
            raise RequestError(400, f"prompt: {len(prompts)} prompts is over this server's limit of {self.limits.max_prompts} per request", code="too_many_prompts", param="prompt")
        self._check_generated_tokens(len(prompts), decoding)
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        replies: list[list[str]] = []
        async with self._model_turn():
            await self._call(self._check_prompt_tokens, lambda: prompts)
            # One backend batch at a time, so a client that has left stops the generation.
            for start in range(0, len(prompts), self.backend.batch_size):
                await self._ensure_connected(request, f"after {start} of {len(prompts)} prompts")
                replies += await self._call(self.backend.complete, prompts[start: start + self.backend.batch_size], decoding, stop)
            choices = []
            for texts in replies:
                for text in texts:
                    choices.append({"index": len(choices), "text": text, "logprobs": None, "finish_reason": self._finish_reason(text, decoding.max_new_tokens)})
            body = {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": choices,
            }
            if (usage := self._usage(lambda: "".join(prompts), [c["text"] for c in choices])) is not None:
                body["usage"] = usage
            return JSONResponse(body)

    async def models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(
            {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created, "owned_by": "econlm",
                                         **self._root()}]}
        )

    def _root(self) -> dict[str, str]:
        """The served model's path or name as vLLM reports it (`root`), so a client on this machine
        can read how the model was trained (`OpenAIBackend.source_model`)."""
        model = self.backend.model_ref
        return {"root": model.source} if model is not None else {}

    async def health(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.model_name, "backend": self.backend.name, "waiting": self._waiting})


def token_logprobs(tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
    """A reply's tokens in OpenAI's `logprobs.content` form (each with its UTF-8 bytes)."""
    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return [{**entry(t.token, t.logprob), "top_logprobs": [entry(*alt) for alt in t.top]} for t in tokens]


class _InternalErrors:
    """ASGI middleware: a failure inside the server gets a generic 500 (its text may hold paths or
    data) and its traceback is logged once, under an id the client is given."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import JSONResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s on %s %s", error_id, scope["method"], scope["path"])
            if not started:
                body = error_body(f"internal server error (id {error_id}; the details are in the server's log)", "server_error")
                await JSONResponse(body, status_code=500)(scope, receive, send)


def create_app(backend: Backend, model_name: str = "econlm", limits: ServerLimits = ServerLimits(), api_key: str | None = None):
    """The Starlette app: OpenAI routes, every error as JSON; with `api_key`, only for clients
    that send it."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    server = ModelServer(backend, model_name, limits)

    async def request_error(request, exc: RequestError):
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(error_body(exc.message, kind, exc.code, exc.param), status_code=exc.status, headers=headers)

    async def http_error(request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    async def client_gone(request, exc: ClientGone):
        log.info("%s %s: the client left %s; stopped, nothing sent", request.method, request.url.path, exc)
        return Response(status_code=499)  # nginx's "client closed request"; nobody is there to read it

    middleware = [Middleware(_InternalErrors)]
    if api_key:
        from econlm.standalone.econlm_require_key import RequireKey  # vLLM's server runs it too

        middleware.append(Middleware(RequireKey, api_key=api_key))
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/health", server.health, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={RequestError: request_error, HTTPException: http_error, ClientGone: client_gone},
    )
    app.state.server = server
    return app


# ---------------------------------------------------------------------------- running


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name other than localhost counts as not)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    spec: EngineSpec,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str = "econlm",
    limits: ServerLimits = ServerLimits(),
    api_key: str | None = None,
    threads: int | None = None,
) -> None:
    """Load the backend a spec names (computing on `threads` CPU threads, else the engine's
    default) and serve it until interrupted; this module's log lines go where uvicorn's go."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"][__name__] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    app = create_app(get_backend(spec, **({"n_threads": threads} if threads is not None else {})), model_name, limits, api_key)
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on a free port; yields its base URL
    (for tests and the load test in `econlm bench infer`)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def load_test(
    base_url: str,
    model: str,
    prompts: list[str],
    n_requests: int = 200,
    concurrency: int = 8,
    max_tokens: int = 8,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Send `n_requests` chat completions (`concurrency` at a time, prompts in turn) and count
    what came back; latencies are per request, from send to full response. Bounded in count and
    in time (each request times out after `timeout_s`)."""
    import httpx

    async def run() -> tuple[list[float], dict[str, int], float]:
        latencies: list[float] = []
        failures: dict[str, int] = {}
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

            async def one(i: int) -> None:
                body = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}], "max_tokens": max_tokens, "temperature": 0}
                async with gate:
                    started = time.perf_counter()
                    try:
                        response = await client.post("/v1/chat/completions", json=body)
                        ok = response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
                        reason = f"HTTP {response.status_code}"
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        ok, reason = False, type(exc).__name__
                    if ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        failures[reason] = failures.get(reason, 0) + 1

            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n_requests)))
            return latencies, failures, time.perf_counter() - started

    latencies, failures, wall = asyncio.run(run())
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "requests": n_requests,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "ok": len(latencies),
        "lost": n_requests - len(latencies),
        "failures": failures,
        "p50_s": round(quantiles[49], 4),
        "p95_s": round(quantiles[94], 4),
        "max_s": round(max(latencies), 4) if latencies else None,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
    }
