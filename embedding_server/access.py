"""Who may call the API: an optional bearer key."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_server.errors import ApiError, ErrorCode
from embedding_server.routes import PROBE_PATHS, error_body


class ApiKeyMiddleware:
    """Every route but PROBE_PATHS needs `Authorization: Bearer <key>`, else 401 with the JSON error body (the OpenAI
    one under /v1, which OpenAI clients read)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or scope["path"] in PROBE_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a websocket: none is served, and none opens without the key
            await send({"type": "websocket.close", "code": 1008})
            return
        error = ApiError(ErrorCode.UNAUTHORIZED, "missing or wrong API key: send Authorization: Bearer <key>")
        await error.to_response(error_body(scope["path"]))(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        # Compared in constant time, so that the answer's timing does not tell how much of a guess was right.
        return hmac.compare_digest(given, self.expected)
