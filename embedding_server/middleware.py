"""Rewrites the 4xx bodies that BentoML writes itself (schema validation, media type) into this API's error body."""

from __future__ import annotations

import json
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_server.errors import ApiError, ErrorCode, from_validation_errors
from embedding_server.observability import record_error


def as_api_error(status: int, body: bytes) -> ApiError | None:
    """BentoML's error body as an ApiError, or None when it is already in this API's shape (or is no JSON error)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, list) and len(payload) == 1:  # BentoML wraps some errors in a one-element list
        payload = payload[0]
    if not isinstance(payload, dict) or isinstance(payload.get("error"), dict):
        return None
    if isinstance(payload.get("detail"), list):
        return from_validation_errors(payload["detail"])
    code = (
        ErrorCode.UNSUPPORTED_MEDIA_TYPE if status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE else ErrorCode.INVALID_REQUEST
    )
    return ApiError(code, str(payload.get("error", payload)))


class ErrorBodyMiddleware:
    """JSON in and JSON errors out on the given routes, in the OpenAI error shape on `openai_routes`.

    A body sent without `Content-Type: application/json` (curl's `-d` says form-urlencoded) is read as JSON all the
    same. Only 4xx responses are buffered and looked at; everything else streams through untouched.
    """

    def __init__(self, app: ASGIApp, routes: frozenset[str], openai_routes: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.routes = routes | openai_routes
        self.openai_routes = openai_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        openai = scope["path"] in self.openai_routes
        scope = {**scope, "headers": [*_without_content_type(scope["headers"]), (b"content-type", b"application/json")]}
        held: list[Message] = []

        async def send_rewritten(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                held.append(message)
                return
            if not held:
                await send(message)
                return
            held.append(message)
            if message.get("more_body"):
                return
            start, *chunks = held
            body = b"".join(chunk.get("body", b"") for chunk in chunks)
            error = as_api_error(start["status"], body)
            if error is not None:
                # BentoML answers 400 to every schema problem; the code's own status says which kind it was.
                status = error.status if start["status"] == HTTPStatus.BAD_REQUEST else start["status"]
                body = json.dumps(error.openai_body() if openai else error.body()).encode()
                record_error(error.code.value)
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                start = {**start, "status": int(status), "headers": headers}
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_rewritten)


def _without_content_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() != b"content-type"]
