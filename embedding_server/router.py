"""The one way into the API's POST routes (routes.py): the body read as JSON (whatever its Content-Type says, as curl
-d sends form-urlencoded) or as the route's multipart form, validated against the route's request, handled, and
answered with the route's response or this API's error body.

It stands in front of BentoML's own endpoints for these paths because BentoML writes its own bodies for a request
that fails validation (`{"error": "...", "detail": [...]}`, 400 for every kind) and has no multipart form whose part
names are item ids; the `@bentoml.api` methods still declare the routes, for BentoML's client and its schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from embedding_server.deadline import CLIENT_CLOSED_REQUEST
from embedding_server.embedder import Embedder
from embedding_server.errors import ApiError, ErrorCode, from_validation_errors
from embedding_server.observability import record_error
from embedding_server.routes import API_ROUTES, ApiRoute
from embedding_server.uploads import is_multipart, read_form

logger = logging.getLogger("embedding_server")


class ApiRouter:
    """Serves a POST to one of API_ROUTES with `embedder()`; everything else goes on to BentoML."""

    def __init__(self, app: ASGIApp, embedder: Callable[[], Embedder]) -> None:
        self.app = app
        self.embedder = embedder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = API_ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        response = await serve(route, self.embedder(), Request(scope, receive))
        await response(scope, receive, send)


async def serve(route: ApiRoute, embedder: Embedder, request: Request) -> Response:
    try:
        if route.upload is not None and is_multipart(request):
            async with read_form(request) as form:
                answer = await route.handle(embedder, await route.upload.to_request(form))
        else:
            answer = await route.handle(embedder, parsed(route, await request.body()))
    except ApiError as error:
        return error.to_response(route.errors)
    except ClientDisconnect:  # gone before its body was read (or cut off by the body limit, which answers for it)
        record_error("client_closed_request")
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except Exception:
        logger.exception("%s failed", route.path)
        error = ApiError(ErrorCode.INTERNAL_ERROR, "the server failed on this request; its log says why")
        return error.to_response(route.errors)
    return Response(answer.model_dump_json(), media_type="application/json")


def parsed(route: ApiRoute, body: bytes):
    """The body as the route's request; an empty body is an empty object (every required field missing)."""
    try:
        return route.request.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise from_validation_errors(exc.errors(include_input=False)) from None
