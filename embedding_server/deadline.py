"""A deadline for every request, and no work left behind by a client that has gone."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding_server.errors import ApiError, ErrorCode
from embedding_server.observability import record_error
from embedding_server.routes import error_body

CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request whose client left before the answer: what the log and the metrics show for it."""


class RequestDeadlineMiddleware:
    """Stops a request's work at `timeout_s` (504 `request_timeout`, if no answer has started) or as soon as its
    client disconnects (499, which goes nowhere). Stopping cancels the work: a request still queued for a model is
    dropped from the queue rather than computed for nobody.

    Something is always sent: BentoML's own timeout middleware, outside this one, holds the request until the
    first message of an answer, or for its whole timeout."""

    def __init__(self, app: ASGIApp, timeout_s: float, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.exempt_paths = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        started = False

        async def receive_noting_the_end() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_read.set()
            return message

        async def send_noting_the_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive_noting_the_end, send_noting_the_start))
        client_gone = asyncio.ensure_future(self._client_gone(receive, body_read))
        try:
            done, _ = await asyncio.wait(
                {work, client_gone}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the server is stopping this request: its work stops too
            work.cancel()
            raise
        finally:
            client_gone.cancel()
        if work in done:
            work.result()  # the app's own exception, if any, as without this middleware
            return
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        if started:
            return  # an answer already under way
        if client_gone in done:
            record_error("client_closed_request")
            await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        error = ApiError(
            ErrorCode.REQUEST_TIMEOUT, f"the request took more than {self.timeout_s:g} s (REQUEST_TIMEOUT_S)"
        )
        await error.to_response(error_body(scope["path"]))(scope, receive, send)

    @staticmethod
    async def _client_gone(receive: Receive, body_read: asyncio.Event) -> None:
        """Returns when the client disconnects. Listens only once the app has read the whole body, so that it never
        takes a part of the body from the app."""
        await body_read.wait()
        while (await receive())["type"] != "http.disconnect":
            pass
