"""A cap on the size of a request body, enforced before anything parses or buffers it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_server.errors import ApiError, ErrorCode
from embedding_server.routes import error_body


class BodyLimitMiddleware:
    """Answers 413 `request_too_large` to a body over `max_bytes`: at once when its Content-Length says so, else as
    soon as the streamed body (chunked, or lying about its length) crosses the limit. Without it a multipart upload
    is spooled whole and read into memory before any per-item limit is checked."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # The app sees a client that went away and stops reading; its answer is replaced below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_over(message: Message) -> None:
            nonlocal started
            if over and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, send_unless_over)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(
            ErrorCode.REQUEST_TOO_LARGE, f"request body is over {self.max_bytes} bytes (MAX_REQUEST_BYTES)"
        )
        await error.to_response(error_body(scope["path"]))(scope, receive, send)
