"""The soak's load: closed-loop clients that send the mix of kinds at a steady rate, judge every answer and tally
what they saw, by phase and kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from bench.soak_kinds import Body, Kind, Mix, judge

REQUEST_TIMEOUT_S = 60  # a valid request at this load takes well under a second; past a minute it counts as lost
EXCERPT_CHARS = 300
KEPT_UNEXPECTED = 100


@dataclass
class KindStats:
    requests: int = 0
    unexpected: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class Tally:
    """What the clients saw, by phase and kind, and every unexpected answer (the first KEPT_UNEXPECTED in full)."""

    started: float
    stats: dict[str, dict[str, KindStats]] = field(default_factory=dict)
    unexpected: list[dict] = field(default_factory=list)
    unexpected_total: int = 0

    def add(self, phase: str, kind: Kind, latency_s: float, problem: dict | None) -> None:
        stats = self.stats.setdefault(phase, {}).setdefault(kind.name, KindStats())
        stats.requests += 1
        stats.latencies_ms.append(latency_s * 1000)
        if problem is not None:
            stats.unexpected += 1
            self.unexpected_total += 1
            if len(self.unexpected) < KEPT_UNEXPECTED:
                at = round(time.monotonic() - self.started, 2)
                self.unexpected.append({"t": at, "phase": phase, "kind": kind.name, **problem})


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def send(session: aiohttp.ClientSession, url: str, kind: Kind, body: Body) -> dict | None:
    """Sends one request of `kind`; None when it got the expected answer, else the problem, status and body excerpt."""
    try:
        if body.data is None:
            request = session.get(url + kind.path)
        else:
            data = chunks(body.data) if body.chunked else body.data
            request = session.post(url + kind.path, data=data, headers={"Content-Type": body.content_type})
        async with request as response:
            payload = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return {"problem": f"{type(exc).__name__}: {exc}", "status": None, "body": ""}
    problem = judge(kind, status, payload)
    if problem is None:
        return None
    return {"problem": problem, "status": status, "body": payload[:EXCERPT_CHARS].decode(errors="replace")}


async def drive(url: str, mix: Mix, clients: int, rate: float, seconds: float, phase: str, tally: Tally) -> None:
    """`clients` closed-loop clients for `seconds`: each sends its next request one interval (clients ÷ rate) after
    its previous one was sent, or at once when that answer came later (never two in flight, never a catch-up burst).
    Their connections are closed when it returns."""
    interval = clients / rate
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + seconds

        async def client(index: int) -> None:
            next_at = time.monotonic() + index * interval / clients  # spread the clients over one interval
            while (now := time.monotonic()) < deadline:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                sent = time.monotonic()
                next_at = sent + interval
                kind, body = mix.next()
                problem = await send(session, url, kind, body)
                tally.add(phase, kind, time.monotonic() - sent, problem)

        await asyncio.gather(*(client(index) for index in range(clients)))


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def kind_rows(kinds: list[Kind], tally: Tally) -> list[dict]:
    """Each kind's figures: requests and unexpected answers over the whole soak, latencies over the measured run."""
    rows = []
    for kind in kinds:
        warmup = tally.stats.get("warmup", {}).get(kind.name, KindStats())
        run = tally.stats.get("run", {}).get(kind.name, KindStats())
        rows.append(
            {
                "kind": kind.name,
                "path": kind.path,
                "expected": f"{kind.status}" + (f" {kind.code}" if kind.code else ""),
                "requests": warmup.requests + run.requests,
                "warmup_requests": warmup.requests,
                "unexpected": warmup.unexpected + run.unexpected,
                "p50_ms": percentile(run.latencies_ms, 50),
                "p99_ms": percentile(run.latencies_ms, 99),
            }
        )
    return rows
