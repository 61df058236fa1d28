"""A `Backend` over any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server, Ollama).

Plain httpx rather than the `openai` SDK: econlm needs three calls (chat, streamed chat, chat
with log-probabilities), and local servers differ from OpenAI in small ways the code handles
itself (servers that ignore `n`, that send no usage, that need no key).

- Base URL from `base_url` or `$OPENAI_BASE_URL` (default https://api.openai.com/v1); key from
  `api_key`, else `$ECONLM_API_KEY` (the key `econlm serve --api-key` checks) for any server but
  OpenAI's, else `$OPENAI_API_KEY`: a server key is never sent to OpenAI, nor an OpenAI key to
  a local server that has its own.
- Timeouts on every request; bounded retries with exponential backoff on 429, 5xx and
  connection errors (a `Retry-After` header is honoured up to `max_backoff`); `concurrency`
  requests in flight at most.
- `score_options` asks for the log-probabilities of the first reply token (`logprobs` with
  `top_logprobs`): exact for options that start with different tokens, as the classification
  answers do. An endpoint that returns no log-probabilities cannot score and says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from econlm.backends import Decoding, Messages, SeparatePasses, TokenLogprob
from econlm.errors import UserError
from econlm.models import ModelRef

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
TOP_LOGPROBS = 20  # the most OpenAI allows


class OpenAIBackend(SeparatePasses):
    """A model served behind a chat endpoint: it chats, streams and scores chat options; the
    prompt text, its tokens and plain-text prompts stay on the server, so those calls are errors."""

    model_ref = None  # nothing local: the server holds the model
    batch_size = 1  # one conversation per request (`concurrency` requests in flight)
    has_chat_template = True  # the server applies its model's template
    has_tokenizer = False

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 4,
    ):
        if concurrency < 1:
            raise UserError("concurrency must be at least 1")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key if api_key is not None else _key_from_environment(self.base_url)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency),
        )

    @cached_property
    def source_model(self) -> ModelRef | None:
        """The model the server reports serving under this name, when it is on this machine: the
        `root` of its /v1/models entry, which vLLM sets to an adapter's folder (or the base model's
        path) and `econlm serve` to its model's. So a served econlm run is prompted as it was trained."""
        try:
            listed = self._client.get("/models").json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError):
            return None  # no model list here; a failing server says so on the first real request
        roots = [entry.get("root") for entry in listed if isinstance(entry, dict) and entry.get("id") == self.model]
        if not roots or not isinstance(roots[0], str) or not Path(roots[0]).exists():
            return None
        try:
            return ModelRef.parse(roots[0])
        except UserError:  # a path here that is no model: nothing to read
            return None

    # -- the Backend protocol -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "kind": "endpoint", "base_url": self.base_url, "chat_template": True}

    def chat_prompt(self, conversation: Messages) -> str:
        raise UserError(f"{self.name}: the endpoint applies its chat template itself; the prompt text is not visible here")

    def count_tokens(self, text: str) -> int:
        raise UserError(f"{self.name}: the endpoint's tokenizer is not available here, so tokens cannot be counted")

    def complete(self, prompts: Sequence[str], decoding: Decoding = Decoding(), stop: Sequence[str] = ()) -> list[list[str]]:
        raise UserError(self._chat_only("plain-text completions (one-shot prompts of base models)"))

    def score_text_options(self, prefixes: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        raise UserError(self._chat_only("scoring options after a plain-text prompt"))

    def _chat_only(self, what: str) -> str:
        return f"{self.name}: an OpenAI-compatible chat endpoint cannot do {what}; use the transformers or llamacpp engine"

    def chat(self, conversations: Sequence[Messages], decoding: Decoding = Decoding()) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda conversation: self._replies(conversation, decoding), conversations))

    def stream_chat(self, conversation: Messages, decoding: Decoding = Decoding()) -> Iterator[str]:
        body = {**self._body(conversation, decoding, n=1), "stream": True}
        with contextlib.closing(self._send(body, stream=True)) as response:
            try:
                # Server-sent events, parsed here (a dozen lines) rather than adding a dependency.
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if event.get("error"):
                        raise UserError(f"{self.base_url}: the stream failed: {_error_text(event)}")
                    for choice in event.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                # Retrying here would repeat text already shown, so a broken stream is reported.
                raise UserError(f"{self.base_url}: the reply stream broke off ({type(exc).__name__}: {exc})") from None

    def score_options(self, conversations: Sequence[Messages], options: Sequence[str]) -> list[list[float]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda conversation: self._score(conversation, options), conversations))

    # -- helpers ----------------------------------------------------------------------------

    def _body(self, conversation: Messages, decoding: Decoding, n: int, seed: int | None = None) -> dict:
        body = {
            "model": self.model,
            "messages": list(conversation),
            "max_tokens": decoding.max_new_tokens,
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "seed": decoding.seed if seed is None else seed,
        }
        if n > 1:
            body["n"] = n
        return body

    def _replies(self, conversation: Messages, decoding: Decoding) -> list[str]:
        return [_content(choice) for choice in self._choices(conversation, decoding)]

    def _choices(self, conversation: Messages, decoding: Decoding, **fields) -> list[dict]:
        """`num_return_sequences` choices (with `fields` added to each request); servers that
        ignore `n` are asked again (new seeds)."""
        wanted = decoding.num_return_sequences
        choices: list[dict] = []
        while len(choices) < wanted:
            body = {**self._body(conversation, decoding, n=wanted - len(choices), seed=decoding.seed + len(choices)),
                    **fields}
            found = self._send(body).json().get("choices") or []
            if not found:
                raise UserError(f"{self.base_url}: the reply holds no choices")
            choices.extend(found)
        return choices[:wanted]

    def chat_with_logprobs(self, conversation: Messages, decoding: Decoding,
                           top_logprobs: int) -> list[tuple[str, list[TokenLogprob]]]:
        replies = []
        for choice in self._choices(conversation, decoding, logprobs=True, top_logprobs=top_logprobs):
            content = (choice.get("logprobs") or {}).get("content")
            if not isinstance(content, list):
                raise UserError(
                    f"{self.base_url}: the endpoint returned no log-probabilities, so it cannot score options "
                    "(classification, and the category turn before a classify-then-title model's title); "
                    "use a server with `logprobs` support (vLLM, OpenAI, econlm serve, llama.cpp server) "
                    "or the transformers backend")
            replies.append((_content(choice), [
                TokenLogprob(t["token"], t["logprob"], tuple((alt["token"], alt["logprob"]) for alt in t.get("top_logprobs") or []))
                for t in content]))
        return replies

    def _score(self, conversation: Messages, options: Sequence[str]) -> list[float]:
        tokens = self.chat_with_logprobs(conversation, Decoding(max_new_tokens=1), TOP_LOGPROBS)[0][1]
        if not tokens or not tokens[0].top:
            raise UserError(f"{self.base_url}: the reply's first token came without its most likely alternatives, "
                            "so the options cannot be scored")
        top = tokens[0].top
        scores = []
        for option in options:
            # Every returned first token that starts this option (" Econ", "E", "Econom") is a way
            # to begin it; their probabilities add up.
            matching = [logprob for token, logprob in top if token.strip() and option.startswith(token.lstrip())]
            # An option outside the top tokens gets the smallest returned log-probability: an upper bound.
            scores.append(_logsumexp(matching) if matching else min(logprob for _, logprob in top))
        return scores

    def _send(self, body: dict, stream: bool = False):
        """POST /chat/completions with retries; a streamed response must be closed by the caller."""
        attempt = 0
        while True:
            wait = None
            try:
                request = self._client.build_request("POST", "/chat/completions", json=body)
                response = self._client.send(request, stream=stream)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt >= self.max_retries:
                    raise UserError(
                        f"cannot reach the OpenAI-compatible endpoint at {self.base_url} "
                        f"after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}"
                    ) from None
            else:
                if response.status_code < 400:
                    return response
                if stream:
                    response.read()
                response.close()
                if response.status_code not in RETRY_STATUS or attempt >= self.max_retries:
                    raise UserError(self._http_error(response, attempt))
                wait = _retry_after(response)
            delay = min(self.max_backoff, wait if wait is not None else self.backoff * 2**attempt)
            time.sleep(delay)
            attempt += 1

    def _http_error(self, response: httpx.Response, attempt: int) -> str:
        status = response.status_code
        try:
            detail = _error_text(response.json())
        except (json.JSONDecodeError, UnicodeDecodeError):
            detail = response.text[:200]
        hint = {
            401: " (check ECONLM_API_KEY or OPENAI_API_KEY)",
            403: " (the key may not have access to this model)",
            404: f" (is {self.base_url} an OpenAI-compatible /v1 base URL, and is model {self.model!r} served?)",
        }.get(status, "")
        tries = f" after {attempt + 1} attempts" if attempt else ""
        return f"{self.base_url}/chat/completions: HTTP {status}{tries}: {detail}{hint}"


def _key_from_environment(base_url: str) -> str | None:
    own_server_key = os.environ.get("ECONLM_API_KEY") if base_url != DEFAULT_BASE_URL else None
    return own_server_key or os.environ.get("OPENAI_API_KEY")


def _content(choice: dict) -> str:
    return (choice.get("message") or {}).get("content") or ""


def _error_text(payload: object) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        if error:
            return str(error)[:300]
    return str(payload)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
