"""Concurrent load on the real server: 64 clients for 20 s against each route, and every answer must be a 200."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import pytest
from conftest import data_url, image_bytes

CLIENTS = 64
SECONDS = 20

PNG = data_url(image_bytes(size=(320, 240)))
BODIES = {
    "/embed/text": {"texts": ["a photo of a dog", "quarterly tax report for the third quarter"]},
    "/embed/image": {"images": [PNG]},
    "/embed/batch": {
        "items": [
            {"id": "t", "type": "text", "content": "a picture of a puppy"},
            {"id": "i", "type": "image", "content": PNG},
        ]
    },
}


async def hammer(url: str, body: dict) -> collections.Counter:
    statuses: collections.Counter = collections.Counter()
    deadline = time.monotonic() + SECONDS
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            while time.monotonic() < deadline:
                try:
                    async with session.post(url, json=body) as response:
                        await response.read()
                        statuses[response.status] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return statuses


@pytest.mark.parametrize("route", list(BODIES))
def test_64_clients_get_only_200s(server, route):
    statuses = asyncio.run(hammer(server.url + route, BODIES[route]))
    print(f"{route}: {dict(statuses)} in {SECONDS} s with {CLIENTS} clients")
    assert set(statuses) == {200}, f"{dict(statuses)}\n{server.log_tail(30)}"
    assert statuses[200] > CLIENTS  # every client got answers, not one request each
