"""The API key of `econlm serve`, on every engine: every route but /health (left open for
probes) needs `Authorization: Bearer KEY`, else a 401 with an OpenAI-style JSON error.

vLLM's own `--api-key` guards only its /v1, /v2, /inference and /cohere routes; /invocations
(SageMaker's route to the same chat and completion handlers), /tokenize, /detokenize, /metrics,
/version, /load, /ping, /scale_elastic_ep, /generative_scoring and the OpenAPI docs stay open.
`econlm serve --engine vllm` therefore also passes this class as vLLM's `--middleware`, which
vLLM constructs with the app alone: the key then comes from `$VLLM_API_KEY`, where econlm puts it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

OPEN_PATH = "/health"
KEY_VARIABLE = "VLLM_API_KEY"


class RequireKey:
    """ASGI middleware. Keys are compared as SHA-256 digests in constant time, so neither their
    content nor their length shows in the response time."""

    def __init__(self, app, api_key: str | None = None):
        self.app = app
        key = api_key if api_key is not None else os.environ.get(KEY_VARIABLE)
        if not key:
            raise ValueError(f"RequireKey needs an API key (argument or ${KEY_VARIABLE})")
        self._digest = hashlib.sha256(key.encode()).digest()

    def _refusal(self, header: str | None) -> str | None:
        if not header:
            return "no API key: send the header `Authorization: Bearer KEY`"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self._digest):
            return "incorrect API key"
        return None

    async def __call__(self, scope, receive, send) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] == "http" and path != OPEN_PATH:
            refusal = self._refusal(Headers(scope=scope).get("authorization"))
            if refusal is not None:
                body = {"error": {"message": refusal, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
