"""The server's /embed/batch as the client uses it: one multipart upload per batch of files, transient failures
retried with exponential backoff.

A file travels as its own bytes (no base64), its part named by its index in the batch, so that no path has to survive
a Content-Disposition header; vectors come back as base64 float32, exact and a quarter the size of JSON numbers.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import numpy as np

from client.files import Kind

BATCH_ROUTE = "/embed/batch"
OPTIONS = json.dumps({"encoding": "base64", "normalize": True, "truncate": True})
TEXT_PART_TYPE = "text/plain; charset=utf-8"
# The server takes every part that is not text/* as an image and finds its format from the bytes; a type guessed from
# the name could say text/* for an image found by its signature.
IMAGE_PART_TYPE = "application/octet-stream"
# Statuses worth asking again: the server (or a proxy in front of it) is overloaded, restarting or timed out.
TRANSIENT_STATUSES = frozenset({408, 429} | set(range(500, 600)))
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `retries` more tries after a transient failure. Before retry n (from 0) the client waits the server's
    Retry-After when it sends one, else a delay drawn from [c/2, c] with c = base_delay·2ⁿ; both capped at
    max_delay. The jitter keeps clients that failed together from retrying together."""

    retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2**retry)
        return random.uniform(ceiling / 2, ceiling)


class RequestFailed(Exception):
    """The whole request failed: the server refused it (`status` and `code` say how) or it still failed, transiently,
    after every retry (`transient`)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.transient = transient


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    transient_statuses: frozenset[int] = TRANSIENT_STATUSES,
    on_retry: Callable[[str, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> httpx.Response:
    """The first answer whose status is not in `transient_statuses`; connection errors and timeouts are retried
    too (embedding is idempotent, so a request that may have reached the server can be sent again). `on_retry` hears
    each failure that is retried and the delay before the retry. Raises RequestFailed(transient=True) when the last
    try fails as well."""
    retry = 0
    while True:
        try:
            response = await send()
        except httpx.TransportError as error:  # refused, reset, timed out
            problem, status, code, retry_after = f"{type(error).__name__}: {error}", None, None, None
        else:
            if response.status_code not in transient_statuses:
                return response
            code, problem = error_of(response)
            status, retry_after = response.status_code, parse_retry_after(response.headers.get("retry-after"))
        if retry == policy.retries:
            tries = "try" if policy.retries == 0 else f"{policy.retries + 1} tries"
            raise RequestFailed(f"{problem} (after {tries})", status, code, transient=True)
        delay = policy.delay(retry, retry_after)
        if on_retry is not None:
            on_retry(problem, delay)
        await sleep(delay)
        retry += 1


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its forms (seconds, or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_of(response: httpx.Response) -> tuple[str | None, str]:
    """The server's error code (None when the body is not its JSON error) and a one-line description."""
    try:
        error = response.json()["error"]
        return error["code"], f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        body = " ".join(response.text.split())[:200]
        return None, f"{response.status_code} {response.reason_phrase}" + (f": {body}" if body else "")


def decode_vector(encoded: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")


class BatchClient:
    """The HTTP side of one server: its health and its batch route, with `Authorization: Bearer` when given a key."""

    def __init__(
        self,
        server: str,
        api_key: str | None,
        policy: RetryPolicy,
        timeout: float,
        concurrency: int,
        on_retry: Callable[[str, float], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self.on_retry = on_retry
        self.http = httpx.AsyncClient(
            base_url=server.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=concurrency),
            transport=transport,
        )

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *_) -> None:
        await self.http.aclose()

    async def health(self) -> dict:
        """GET /health's body. Only unreachability is retried: a 503 here is the server's answer (a model not
        loaded), not a hiccup. Raises RequestFailed when the server cannot be reached or is not this API."""
        response = await send_with_retries(lambda: self.http.get("/health"), self.policy, frozenset(), self.on_retry)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            problem = error_of(response)[1]
            raise RequestFailed(f"GET /health answered {problem}: not the embedding server's health")
        return body

    async def embed(self, files: Sequence[tuple[Kind, bytes]]) -> list[np.ndarray | str]:
        """One result per file, in order: its vector, or the server's reason for not embedding it. Raises
        RequestFailed when the request as a whole is refused or keeps failing."""
        parts = [
            (str(index), (str(index), data, TEXT_PART_TYPE if kind is Kind.TEXT else IMAGE_PART_TYPE))
            for index, (kind, data) in enumerate(files)
        ]
        response = await send_with_retries(
            lambda: self.http.post(BATCH_ROUTE, data={"options": OPTIONS}, files=parts),
            self.policy,
            on_retry=self.on_retry,
        )
        if response.status_code != 200:
            code, problem = error_of(response)
            raise RequestFailed(problem, response.status_code, code)
        try:
            results = {result["id"]: result for result in response.json()["results"]}
        except (ValueError, KeyError, TypeError):
            raise RequestFailed(f"the server's answer is not a batch result: {error_of(response)[1]}") from None
        return [item_outcome(results.get(str(index))) for index in range(len(files))]


def item_outcome(result: dict | None) -> np.ndarray | str:
    if result is None:
        return "missing from the server's answer"
    if result.get("error"):
        return f"{result['error']['code']}: {result['error']['message']}"
    return decode_vector(result["embedding"])
