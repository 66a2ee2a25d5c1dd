"""Closed-loop HTTP load on one route, run as its own process so that the client's CPU is not the harness's.

    python -m bench.load --url http://127.0.0.1:3000 --route text --texts 8 --clients 32 --seconds 10 --data DIR

C clients each send their next request as soon as their previous answer arrives, for D seconds; then no new
request is sent and those in flight finish. Prints one JSON object (see `LoadResult`) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np

from bench.data import load_data

# "embeddings": infinity's route (OpenAI's body), which our server serves too, so that a peer gets the same requests.
ROUTES = {"text": "/embed/text", "image": "/embed/image", "batch": "/embed/batch", "embeddings": "/embeddings"}
WARMUP_REQUESTS = 3
# Generous: at 64 clients × 4 images a CPU queue holds ~20 s of work; the server's own deadline comes first.
REQUEST_TIMEOUT_S = 300


@dataclass
class LoadResult:
    """One row. `items_per_s` counts the items of correct answers over the time from the start to the last answer;
    `latency_ms` (send to whole answer read, queueing included) covers correct answers only, None without any."""

    route: str
    clients: int
    texts_per_request: int
    images_per_request: int
    items_per_request: int
    seconds: float
    requests: int
    items: int
    errors: int
    error_kinds: dict[str, int]
    min_requests_per_client: int
    duration_s: float
    items_per_s: float
    requests_per_s: float
    latency_ms: dict[str, float] | None
    warmup_errors: int


def request_bodies(
    route: str, texts: list[str], images: list[str], n_texts: int, n_images: int, model: str | None = None
) -> list[bytes]:
    """Encoded JSON bodies for the route, each with `n_texts` texts and `n_images` images, consecutive bodies taking
    the next texts and a window of images shifted by one, so that no two are alike; encoded once, so that the
    clients spend no CPU on it. `model` is the `model` field of the embeddings route's bodies."""

    def window(pool: list[str], start: int, size: int) -> list[str]:
        return [pool[(start + offset) % len(pool)] for offset in range(size)]

    bodies = []
    for index in range(len(images) if n_images else len(texts)):
        chosen_texts, chosen_images = window(texts, index * n_texts, n_texts), window(images, index, n_images)
        if route == "text":
            body: dict = {"texts": chosen_texts}
        elif route == "image":
            body = {"images": chosen_images}
        elif route == "embeddings":
            body = {"model": model, "input": chosen_texts}
        else:
            body = {
                "items": [{"id": f"t{i}", "type": "text", "content": text} for i, text in enumerate(chosen_texts)]
                + [{"id": f"i{i}", "type": "image", "content": url} for i, url in enumerate(chosen_images)]
            }
        bodies.append(json.dumps(body).encode())
    return bodies


def embedding_count(route: str, answer: dict) -> int:
    """How many vectors a 200 answer holds; a batch item that failed is no vector."""
    if route == "batch":
        return sum("embedding" in result for result in answer["results"])
    if route == "embeddings":
        return len(answer["data"])
    return len(answer["embeddings"])


async def post(session: aiohttp.ClientSession, url: str, route: str, body: bytes, items: int) -> str | None:
    """Sends one request; None when it got a 200 with `items` vectors, else what went wrong in a few words."""
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            payload = await response.read()
            if response.status != 200:
                return f"status {response.status}"
            return None if embedding_count(route, json.loads(payload)) == items else "wrong count"
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        return type(exc).__name__


async def drive(
    base_url: str,
    route: str,
    bodies: list[bytes],
    n_texts: int,
    n_images: int,
    clients: int,
    seconds: float,
    warmup: bool,
) -> LoadResult:
    """Warms the route up (a few sequential requests) when asked, then runs the closed loop and measures it."""
    url = base_url + ROUTES[route]
    items = n_texts + n_images
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warmup_errors = 0
        for body in bodies[:WARMUP_REQUESTS] if warmup else []:
            warmup_errors += await post(session, url, route, body, items) is not None

        next_body = itertools.cycle(bodies)
        latencies: list[float] = []
        completions: list[float] = []
        error_kinds: dict[str, int] = {}
        per_client = [0] * clients
        start = time.perf_counter()
        deadline = start + seconds

        async def client(index: int) -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                error = await post(session, url, route, next(next_body), items)
                done = time.perf_counter()
                per_client[index] += 1
                if error is None:
                    latencies.append(done - sent)
                    completions.append(done)
                else:
                    error_kinds[error] = error_kinds.get(error, 0) + 1

        await asyncio.gather(*(client(index) for index in range(clients)))

    duration = (max(completions) - start) if completions else 0.0
    requests = len(completions)
    latency_ms = None
    if latencies:
        p50, p90, p99 = np.percentile(np.array(latencies) * 1000, [50, 90, 99])
        latency_ms = {"p50": round(p50, 2), "p90": round(p90, 2), "p99": round(p99, 2)}
    return LoadResult(
        route=route,
        clients=clients,
        texts_per_request=n_texts,
        images_per_request=n_images,
        items_per_request=items,
        seconds=seconds,
        requests=requests,
        items=requests * items,
        errors=sum(error_kinds.values()),
        error_kinds=error_kinds,
        min_requests_per_client=min(per_client),
        duration_s=round(duration, 3),
        items_per_s=round(requests * items / duration, 2) if duration else 0.0,
        requests_per_s=round(requests / duration, 3) if duration else 0.0,
        latency_ms=latency_ms,
        warmup_errors=warmup_errors,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:3000")
    parser.add_argument("--route", choices=ROUTES, required=True)
    parser.add_argument("--texts", type=int, default=0, help="texts per request")
    parser.add_argument("--images", type=int, default=0, help="images per request")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="how long new requests are sent")
    parser.add_argument("--data", type=Path, required=True, help="folder written by bench.data.write_data")
    parser.add_argument("--model", help="the embeddings route's `model` (required there)")
    parser.add_argument("--warmup", action="store_true", help=f"send {WARMUP_REQUESTS} requests first, not counted")
    args = parser.parse_args()
    if (args.route in ("text", "embeddings") and args.images) or (args.route == "image" and args.texts):
        parser.error("/embed/text and /embeddings take texts only, /embed/image images only")
    if not args.texts + args.images:
        parser.error("a request needs at least one item")
    if args.route == "embeddings" and not args.model:
        parser.error("/embeddings needs --model")

    texts, images = load_data(args.data)
    bodies = request_bodies(args.route, texts, images, args.texts, args.images, args.model)
    result = asyncio.run(
        drive(args.url, args.route, bodies, args.texts, args.images, args.clients, args.seconds, args.warmup)
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
