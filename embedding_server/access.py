"""Who may call the API: an optional bearer key."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_server.errors import ApiError, ErrorCode

OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/metrics"})
"""Probes and scrapers carry no key."""


class ApiKeyMiddleware:
    """Every route but OPEN_PATHS needs `Authorization: Bearer <key>`, else 401 with the JSON error body (the OpenAI
    one under /v1, which OpenAI clients read)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = ApiError(ErrorCode.UNAUTHORIZED, "missing or wrong API key: send Authorization: Bearer <key>")
        await error.to_response(openai=scope["path"].startswith("/v1/"))(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        # Compared in constant time, so that the answer's timing does not tell how much of a guess was right.
        return hmac.compare_digest(given, self.expected)
