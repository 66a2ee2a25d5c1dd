"""What the server reports about itself: Prometheus series beside BentoML's own, and one log line per request.

The series are plain prometheus_client objects: `bentoml serve` starts every process with PROMETHEUS_MULTIPROC_DIR
set, so the model services' series reach the API's /metrics together with BentoML's.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("embedding_server.requests")

ITEMS_EMBEDDED = Counter("embedding_items", "Items embedded, by model (text, image, image_text).", ["model"])
REQUEST_ERRORS = Counter("embedding_request_errors", "Requests answered with an error, by error code.", ["code"])
ITEM_ERRORS = Counter("embedding_item_errors", "Items of /embed/batch that failed alone, by error code.", ["code"])
TEXTS_TRUNCATED = Counter("embedding_texts_truncated", "Texts cut to the model's token limit, by model.", ["model"])
MODEL_BATCH_SIZE = Histogram(
    "embedding_model_batch_size",
    "Items in each batch a model service ran, by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
IMAGE_DECODE_SECONDS = Histogram(
    "embedding_image_decode_seconds",
    "Time to decode and pre-process one image in the API.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


@dataclass
class RequestRecord:
    """What one request did, filled in by the code that serves it and logged when it ends."""

    items: int = 0
    error_code: str | None = None


_current = contextvars.ContextVar[RequestRecord | None]("request_record", default=None)


def record_items(model: str, count: int) -> None:
    ITEMS_EMBEDDED.labels(model).inc(count)
    if (record := _current.get()) is not None:
        record.items += count


def record_error(code: str) -> None:
    """Names the error code of the current request's error answer."""
    if (record := _current.get()) is not None:
        record.error_code = code


class RequestLogMiddleware:
    """One log line per request (method, route, items, status, milliseconds; never its content) and the error
    counter. Outermost of this service's middleware, so that it sees every answer, auth refusals included.

    Probes and scrapes (`quiet_paths`) are neither logged nor counted: a load balancer polling /health every second,
    503 while the models load, would drown the log and the error series."""

    def __init__(self, app: ASGIApp, quiet_paths: frozenset[str]) -> None:
        self.app = app
        self.quiet_paths = quiet_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.quiet_paths:
            await self.app(scope, receive, send)
            return
        record = RequestRecord()
        token = _current.set(record)
        started = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            _current.reset(token)
            if status >= 400:
                REQUEST_ERRORS.labels(record.error_code or f"http_{status}").inc()
            logger.info(
                "%s %s status=%d items=%d duration_ms=%.1f",
                scope["method"],
                loggable_path(scope["path"]),
                status,
                record.items,
                (time.perf_counter() - started) * 1000,
            )


def loggable_path(path: str) -> str:
    """The path on one line and at most 200 characters: it comes from the client, before any key is checked, and a
    decoded %0A in it would otherwise start a forged log line."""
    return path[:200].encode("unicode_escape").decode("ascii")
