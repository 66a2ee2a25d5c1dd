"""Soak test: the real server at steady load for minutes, with valid and invalid requests mixed (`make soak`).

    python -m bench.soak                                   # 5 minutes, real MiniLM + full-size random CLIP
    python -m bench.soak --seconds 30 --warmup 10 --bentoml-home STORE --out DIR   # the CI form (tests/test_soak.py)

It starts `bentoml serve .` with small request limits (SOAK_LIMITS, so that the invalid bodies stay small), then
`--clients` closed-loop clients send requests for `--seconds` (the first `--warmup` of them are the warm-up), each
client at most `--rate / --clients` requests per second and never more than one in flight, so the load stays well
under the server's capacity. The requests cycle through 23 kinds (`make_kinds`) in fixed proportions; every kind
has one expected status and, for errors, one expected error code, and a 200 is checked for its content. Anything
else (another status or code, a malformed answer, a timeout, a connection error) is an unexpected answer, recorded
with its kind, status and the start of its body.

Every second it samples the resident memory (RSS), the open file descriptors and the pids of all the server's
processes. After the warm-up and at the end the clients close their connections and the server idles for
IDLE_PAUSE_S; the baseline and the end are measured then. The criteria (exit status 1 when one fails):

- no unexpected answer, warm-up included;
- RSS growth, (the peak over the last 20 % of the run, under load) ÷ (the baseline, idle) − 1, under 10 %;
- open file descriptors at the end ≤ the baseline + FD_SLACK;
- the same server processes (pids) at the end as at the baseline: no worker died and was restarted.

Writes soak.json (figures, samples, the unexpected answers) and soak.png (RSS and fds over time) into `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import io
import itertools
import json
import os
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from urllib3 import encode_multipart_formdata

from bench.data import jpeg_data_url, make_image, make_texts
from bench.run import BENCH_ENV, git_state, machine, models_stored, prepare_store
from bench.server import MIB, ROOT, start_server, stop_server

DEFAULT_SECONDS = 300.0
DEFAULT_WARMUP_S = 30.0
DEFAULT_CLIENTS = 8
# Requests per second over all clients. A round of the mix (27 requests) embeds 6 images and about 20 texts: at 16
# requests/s ~3.6 images/s, a quarter of what the full-size CLIP does on 2 CPU cores (~15/s), and ~12 texts/s against
# ~300/s. Well under capacity, so that no queue fills up and no deadline passes: only leaks and faults can fail it.
DEFAULT_RATE = 16.0
REQUEST_TIMEOUT_S = 60  # a valid request at this load takes well under a second; past a minute it counts as lost
SAMPLE_INTERVAL_S = 1.0
IDLE_PAUSE_S = 2.0  # after the clients close their connections, before the baseline and the end are measured
TAIL_FRACTION = 0.2  # RSS growth takes the peak over this last part of the run after the warm-up
RSS_GROWTH_LIMIT = 0.10
# Open descriptors are counted with no client connected (after IDLE_PAUSE_S). What may differ without a leak: the
# pooled connections between the API and the two model services (2 fds each, one per side) when the run reached a
# higher concurrency than the warm-up, and a log or metrics file rotated meanwhile. A leak of one fd per 1,000
# requests (~5 in the 5-minute run) or worse fails.
FD_SLACK = 4
EXCERPT_CHARS = 300
KEPT_UNEXPECTED = 100

# Small limits, so that the invalid bodies that cross them stay small; the valid requests are far below them.
SOAK_LIMITS = {
    "MAX_ITEMS_PER_REQUEST": "16",
    "MAX_TEXT_CHARS": "2000",
    "MAX_IMAGE_BYTES": "262144",
    "MAX_REQUEST_BYTES": "1048576",
}
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_MODEL = "openai/clip-vit-base-patch32"
LABELS = ["a photo of a cat", "a photo of a dog", "a diagram", "a landscape"]


# --- the requests ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    data: bytes | None  # None: a GET
    content_type: str = "application/json"
    chunked: bool = False  # sent without Content-Length, as a stream


Check = Callable[[dict], str | None]  # a 200's parsed answer → None when right, else what is wrong


@dataclass(frozen=True)
class Kind:
    """One kind of request: its route, the bodies it cycles through, its weight in the mix and what it must get."""

    name: str
    path: str
    bodies: list[Body]
    status: int
    code: str | None = None  # the error code an error answer must carry
    check: Check | None = None  # for a 200
    weight: int = 1

    @property
    def valid(self) -> bool:
        return self.status == 200


def as_json(value: object) -> Body:
    return Body(json.dumps(value).encode())


def multipart(fields: list[tuple[str, object]]) -> Body:
    data, content_type = encode_multipart_formdata(fields, boundary="soak-boundary-7d1c2f")
    return Body(data, content_type)


def png_bytes(seed: int, side: int = 96) -> bytes:
    buffer = io.BytesIO()
    make_image(seed, side).save(buffer, "PNG")
    return buffer.getvalue()


def counted(key: str, count: int) -> Check:
    return lambda answer: None if len(answer[key]) == count else f"{len(answer[key])} {key}, expected {count}"


def batch_check(count: int, failed_id: str, failed_code: str) -> Check:
    """A batch answer with `count` results, all embedded but `failed_id`, which failed with `failed_code`."""

    def check(answer: dict) -> str | None:
        results = answer["results"]
        if len(results) != count:
            return f"{len(results)} results, expected {count}"
        for result in results:
            if result["id"] == failed_id:
                if result.get("error", {}).get("code") != failed_code:
                    return f"item {failed_id}: {result}, expected error {failed_code}"
            elif "embedding" not in result:
                return f"item {result['id']} failed: {result.get('error')}"
        return None

    return check


def classify_check(top_k: int) -> Check:
    def check(answer: dict) -> str | None:
        labels = [len(result["labels"]) for result in answer["results"]]
        return None if labels == [top_k] else f"labels per image {labels}, expected [{top_k}]"

    return check


def v1_check(count: int) -> Check:
    def check(answer: dict) -> str | None:
        if answer.get("object") != "list" or len(answer["data"]) != count:
            return f"object {answer.get('object')!r} with {len(answer['data'])} vectors, expected a list of {count}"
        return None

    return check


def health_check(answer: dict) -> str | None:
    return None if answer.get("status") == "ok" else f"status {answer.get('status')!r}"


def make_kinds(limits: dict[str, str] = SOAK_LIMITS) -> list[Kind]:
    """Every kind of request of the soak, each with a few distinct bodies. Deterministic."""
    max_items, max_chars = int(limits["MAX_ITEMS_PER_REQUEST"]), int(limits["MAX_TEXT_CHARS"])
    max_image, max_body = int(limits["MAX_IMAGE_BYTES"]), int(limits["MAX_REQUEST_BYTES"])
    texts = make_texts(256, seed=7)
    jpegs = [jpeg_data_url(make_image(seed, 512)) for seed in range(6)]  # ~60 KB each, like a photo
    pngs = [png_bytes(100 + seed) for seed in range(6)]
    jpeg_files = [base64.b64decode(url.split(",", 1)[1]) for url in jpegs]
    not_an_image = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    rng = random.Random(7)

    def some_texts(count: int) -> list[str]:
        return rng.sample(texts, count)

    # The image limit is checked on the base64's length, before it is decoded: the bytes need not be an image.
    over_image = np.random.default_rng(7).integers(0, 256, max_image + 1024, dtype=np.uint8).tobytes()
    big_image = "data:image/png;base64," + base64.b64encode(over_image).decode()
    assert len(big_image) < max_body, "image_too_large needs a body under the request limit"
    over_body = json.dumps({"texts": ["x" * (max_body + 1024)]}).encode()
    return [
        # valid
        Kind(
            "text",
            "/embed/text",
            [as_json({"texts": some_texts(4)}) for _ in range(8)],
            200,
            check=counted("embeddings", 4),
            weight=3,
        ),
        Kind(
            "image", "/embed/image", [as_json({"images": [url]}) for url in jpegs], 200, check=counted("embeddings", 1)
        ),
        Kind(
            "image_upload",
            "/embed/image",
            [
                multipart([("images", ("photo.jpg", jpeg, "image/jpeg")), ("images", ("small.png", png, "image/png"))])
                for jpeg, png in zip(jpeg_files, pngs, strict=True)
            ],
            200,
            check=counted("embeddings", 2),
        ),
        Kind(
            "batch",
            "/embed/batch",
            [
                as_json(
                    {
                        "items": [{"id": "t0", "type": "text", "content": text} for text in some_texts(1)]
                        + [
                            {"id": "i0", "type": "image", "content": url},
                            {"id": "bad", "type": "image", "content": not_an_image},
                            {"id": "t1", "type": "text", "content": some_texts(1)[0]},
                        ]
                    }
                )
                for url in jpegs
            ],
            200,
            check=batch_check(4, "bad", "not_an_image"),
        ),
        Kind(
            "batch_upload",
            "/embed/batch",
            [
                multipart(
                    [
                        ("notes.txt", ("notes.txt", some_texts(1)[0].encode(), "text/plain")),
                        ("small.png", ("small.png", png, "image/png")),
                        ("title", some_texts(1)[0]),
                        ("broken.png", ("broken.png", b"not an image", "image/png")),
                    ]
                )
                for png in pngs
            ],
            200,
            check=batch_check(4, "broken.png", "not_an_image"),
        ),
        Kind(
            "image_text",
            "/embed/image-text",
            [as_json({"texts": some_texts(2)}) for _ in range(8)],
            200,
            check=counted("embeddings", 2),
            weight=2,
        ),
        Kind(
            "classify",
            "/classify/image",
            [as_json({"images": [url], "labels": LABELS, "top_k": 2}) for url in jpegs],
            200,
            check=classify_check(2),
        ),
        Kind(
            "v1_embeddings",
            "/v1/embeddings",
            [
                as_json({"model": model, "input": some_texts(2)})
                for _ in range(4)
                for model in ("all-MiniLM-L6-v2", IMAGE_MODEL)
            ]
            + [as_json({"model": TEXT_MODEL, "input": some_texts(2), "encoding_format": "base64"})],
            200,
            check=v1_check(2),
            weight=2,
        ),
        Kind("health", "/health", [Body(None)], 200, check=health_check),
        Kind("metrics", "/metrics", [Body(None)], 200),
        # invalid: each must get exactly its status and error code
        Kind("invalid_base64", "/embed/image", [as_json({"images": ["%%% not base64 %%%"]})], 422, "invalid_base64"),
        Kind("not_an_image", "/embed/image", [as_json({"images": [not_an_image]})], 422, "not_an_image"),
        Kind(
            "truncated_image",
            "/embed/image",
            [as_json({"images": ["data:image/jpeg;base64," + base64.b64encode(jpeg_files[0][:4000]).decode()]})],
            422,
            "truncated_image",
        ),
        Kind("empty_input", "/embed/text", [as_json({"texts": []})], 422, "empty_input"),
        Kind("too_many_items", "/embed/text", [as_json({"texts": some_texts(max_items + 1)})], 422, "too_many_items"),
        Kind("text_too_long", "/embed/text", [as_json({"texts": ["ok", "x" * (max_chars + 1)]})], 422, "text_too_long"),
        Kind(
            "too_many_tokens",
            "/embed/text",
            [as_json({"texts": ["word " * 300], "truncate": False})],
            422,
            "too_many_tokens",
        ),
        Kind("invalid_json", "/embed/text", [Body(b"not json at all"), Body(b'{"texts": ["a"')], 400, "invalid_json"),
        Kind(
            "model_not_found",
            "/v1/embeddings",
            [as_json({"model": "no-such-model", "input": "hello"})],
            404,
            "model_not_found",
        ),
        Kind(
            "invalid_upload",
            "/embed/image",
            [multipart([("images", ("a.png", pngs[0], "image/png")), ("note", "not a file")])],
            422,
            "invalid_upload",
        ),
        Kind("image_too_large", "/embed/image", [as_json({"images": [big_image]})], 413, "image_too_large"),
        Kind("request_too_large", "/embed/text", [Body(over_body)], 413, "request_too_large"),
        Kind(
            "request_too_large_streamed",
            "/embed/text",
            [Body(over_body, chunked=True)],
            413,
            "request_too_large",
        ),
    ]


class Mix:
    """The kinds in fixed proportions: rounds of each kind `weight` times in a shuffled but fixed order; each kind's
    bodies are taken in turn. Shared by the clients, so that the proportions hold over the whole run."""

    def __init__(self, kinds: list[Kind], seed: int = 0) -> None:
        round_ = [kind for kind in kinds for _ in range(kind.weight)]
        random.Random(seed).shuffle(round_)
        self._kinds = itertools.cycle(round_)
        self._bodies = {kind.name: itertools.cycle(kind.bodies) for kind in kinds}

    def next(self) -> tuple[Kind, Body]:
        kind = next(self._kinds)
        return kind, next(self._bodies[kind.name])


# --- sending and judging ----------------------------------------------------------------------------------------------


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


def judge(kind: Kind, status: int, payload: bytes) -> str | None:
    """None when the answer is the one `kind` expects, else what differs."""
    if status != kind.status:
        return f"status {status}, expected {kind.status}"
    if kind.code is None and kind.check is None:
        return None
    try:
        answer = json.loads(payload)
        if kind.code is not None:
            code = answer["error"]["code"]
            return None if code == kind.code else f"error code {code!r}, expected {kind.code!r}"
        return kind.check(answer)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"malformed answer ({type(exc).__name__}: {exc})"


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


# --- the server's processes -------------------------------------------------------------------------------------------


def tree(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def snapshot(root_pid: int) -> dict:
    """RSS (MiB) and open file descriptors of each of the server's processes, and their sums."""
    processes = []
    for process in tree(root_pid):
        with contextlib.suppress(psutil.NoSuchProcess), process.oneshot():
            command = " ".join(process.cmdline())
            processes.append(
                {
                    "pid": process.pid,
                    "command": command if len(command) <= 120 else "…" + command[-119:],
                    "rss_mib": round(process.memory_info().rss / MIB, 1),
                    "fds": process.num_fds(),
                }
            )
    return {
        "rss_mib": round(sum(p["rss_mib"] for p in processes), 1),
        "fds": sum(p["fds"] for p in processes),
        "pids": sorted(p["pid"] for p in processes),
        "processes": processes,
    }


@dataclass
class Sampler:
    """Every SAMPLE_INTERVAL_S, in a daemon thread: seconds since `started`, the phase, RSS sum (MiB), fds sum and
    the number of the server's processes."""

    root_pid: int
    started: float
    phase: str = "start"
    samples: list[dict] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                now = snapshot(self.root_pid)
                at = round(time.monotonic() - self.started, 2)
                self.samples.append(
                    {
                        "t": at,
                        "phase": self.phase,
                        "rss_mib": now["rss_mib"],
                        "fds": now["fds"],
                        "processes": len(now["pids"]),
                    }
                )
            self._stop.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()


# --- the run ----------------------------------------------------------------------------------------------------------


def private_home(store: Path, into: Path) -> Path:
    """A BENTOML_HOME of the soak's own that links the models of `store`: a starting server clears its home's
    Prometheus folder, which would blank the /metrics of another server (a `make bench`) using the same home."""
    into.mkdir(parents=True, exist_ok=True)
    link = into / "models"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(store / "models")
    return into


def log_exceptions(log: str) -> dict[str, int]:
    """The exceptions of the tracebacks in the server's log (the line that ends each), with their counts."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            last = next((later for later in lines[index + 1 :] if later and not later.startswith(" ")), "?")
            name = last.split(":", 1)[0] if not last.startswith("[") else last[:80]
            counts[name] = counts.get(name, 0) + 1
    return counts


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def kind_rows(kinds: list[Kind], tally: Tally) -> list[dict]:
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


def criteria(results: dict) -> list[dict]:
    memory, fds = results["memory"], results["fds"]
    pids = results["pids"]
    requests_ = sum(row["requests"] for row in results["kinds"])
    return [
        {
            "criterion": "unexpected answers",
            "value": results["unexpected_total"],
            "limit": f"0 of {requests_:,}",
            "passed": results["unexpected_total"] == 0 and all(row["requests"] > 0 for row in results["kinds"]),
        },
        {
            "criterion": "RSS growth after warm-up",
            "value": f"{memory['growth_pct']:+.1f} % "
            f"({memory['baseline_mib']:,.0f} → {memory['tail_peak_mib']:,.0f} MiB)",
            "limit": f"< {RSS_GROWTH_LIMIT:.0%}",
            "passed": memory["growth"] < RSS_GROWTH_LIMIT,
        },
        {
            "criterion": "open file descriptors",
            "value": f"{fds['end'] - fds['baseline']:+d} ({fds['baseline']} → {fds['end']})",
            "limit": f"≤ +{FD_SLACK}",
            "passed": fds["end"] <= fds["baseline"] + FD_SLACK,
        },
        {
            "criterion": "server processes unchanged",
            "value": f"{len(pids['baseline'])} → {len(pids['end'])}, "
            + ("same pids" if pids["same"] else "pids differ"),
            "limit": "same pids",
            "passed": pids["same"],
        },
    ]


def render(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([title, line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def tables(results: dict) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:,.1f}"

    kinds = [
        [
            row["kind"],
            row["path"],
            row["expected"],
            f"{row['requests']:,}",
            str(row["unexpected"]),
            fmt(row["p50_ms"]),
            fmt(row["p99_ms"]),
        ]
        for row in results["kinds"]
    ]
    total = sum(row["requests"] for row in results["kinds"])
    kinds.append(["total", "", "", f"{total:,}", str(results["unexpected_total"]), "", ""])
    memory, fds = results["memory"], results["fds"]
    figures = [
        [
            "RSS, all processes (MiB)",
            fmt(memory["baseline_mib"]),
            fmt(memory["tail_peak_mib"]),
            fmt(memory["end_mib"]),
            fmt(memory["peak_mib"]),
        ],
        ["open fds, all processes", str(fds["baseline"]), "–", str(fds["end"]), str(fds["peak"])],
    ]
    verdicts = [
        [c["criterion"], str(c["value"]), c["limit"], "PASS" if c["passed"] else "FAIL"] for c in results["criteria"]
    ]
    settings = results["settings"]
    title = (
        f"Soak: {settings['seconds']:g} s ({settings['warmup_s']:g} s warm-up), {settings['clients']} clients, "
        f"{settings['rate']:g} requests/s planned, {results['achieved_rate']:.1f} achieved"
    )
    return "\n\n".join(
        [
            render(title, ["kind", "route", "expected", "requests", "unexpected", "p50 ms", "p99 ms"], kinds),
            render(
                "Server (after warm-up and at the end: idle, no client connected)",
                ["", "after warm-up", "peak, last 20 %", "end", "peak"],
                figures,
            ),
            render("Criteria", ["criterion", "measured", "limit", ""], verdicts),
        ]
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    t = [s["t"] for s in samples]
    figure, (rss_axes, fd_axes) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    rss_axes.plot(t, [s["rss_mib"] for s in samples])
    rss_axes.axhline(results["memory"]["baseline_mib"] * (1 + RSS_GROWTH_LIMIT), color="red", ls=":", label="limit")
    rss_axes.set_ylabel("RSS, all processes (MiB)")
    fd_axes.plot(t, [s["fds"] for s in samples])
    fd_axes.set_ylabel("open fds, all processes")
    fd_axes.set_xlabel("seconds since the server was ready")
    for axes in (rss_axes, fd_axes):
        axes.axvline(results["phases"]["run_start_s"], color="grey", ls="--", label="end of warm-up")
        axes.grid(alpha=0.3)
    rss_axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def soak(url: str, root_pid: int, kinds: list[Kind], args: argparse.Namespace) -> dict:
    """The warm-up, the baseline, the run and the end measurement against a ready server."""
    started = time.monotonic()
    tally, mix = Tally(started), Mix(kinds)
    sampler = Sampler(root_pid, started, phase="warmup")
    sampler.start()
    try:
        print(f"warm-up: {args.warmup:g} s", flush=True)
        asyncio.run(drive(url, mix, args.clients, args.rate, args.warmup, "warmup", tally))
        sampler.phase = "idle"
        time.sleep(IDLE_PAUSE_S)
        baseline = snapshot(root_pid)
        run_seconds = args.seconds - args.warmup
        print(
            f"baseline: {baseline['rss_mib']:,.0f} MiB, {baseline['fds']} fds, {len(baseline['pids'])} processes; "
            f"run: {run_seconds:g} s",
            flush=True,
        )
        sampler.phase = "run"
        run_start = time.monotonic()
        asyncio.run(drive(url, mix, args.clients, args.rate, run_seconds, "run", tally))
        run_end = time.monotonic()
        sampler.phase = "idle"
        time.sleep(IDLE_PAUSE_S)
        end = snapshot(root_pid)
    finally:
        sampler.stop()

    run_start_s, run_end_s = run_start - started, run_end - started
    tail_from = run_end_s - TAIL_FRACTION * (run_end_s - run_start_s)
    tail = [s["rss_mib"] for s in sampler.samples if s["phase"] == "run" and s["t"] >= tail_from]
    tail_peak = max([*tail, end["rss_mib"]])
    growth = tail_peak / baseline["rss_mib"] - 1
    run_requests = sum(stats.requests for stats in tally.stats.get("run", {}).values())
    results = {
        "phases": {
            "run_start_s": round(run_start_s, 2),
            "run_end_s": round(run_end_s, 2),
            "tail_from_s": round(tail_from, 2),
        },
        "achieved_rate": run_requests / (run_end_s - run_start_s),
        "kinds": kind_rows(kinds, tally),
        "unexpected_total": tally.unexpected_total,
        "unexpected": tally.unexpected,
        "memory": {
            "baseline_mib": baseline["rss_mib"],
            "tail_peak_mib": tail_peak,
            "end_mib": end["rss_mib"],
            "peak_mib": max(s["rss_mib"] for s in sampler.samples),
            "growth": growth,
            "growth_pct": round(growth * 100, 2),
        },
        "fds": {
            "baseline": baseline["fds"],
            "end": end["fds"],
            "peak": max(s["fds"] for s in sampler.samples),
        },
        "pids": {"baseline": baseline["pids"], "end": end["pids"], "same": baseline["pids"] == end["pids"]},
        "processes": {"baseline": baseline["processes"], "end": end["processes"]},
        "samples": sampler.samples,
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"seconds of load, warm-up included (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        help=f"seconds of warm-up, the baseline after it (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--clients", type=int, default=DEFAULT_CLIENTS, help=f"closed-loop clients (default {DEFAULT_CLIENTS})"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"requests per second, all clients together (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--bentoml-home", type=Path, help="an existing model store to use as is (default: build WORK/bentoml-home)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".bench", help="the bench store and data (default .bench)")
    parser.add_argument("--out", type=Path, help="where soak.json, soak.png and the server log go (default WORK/soak)")
    args = parser.parse_args()
    if not 0 < args.warmup < args.seconds or args.clients < 1 or args.rate <= 0:
        parser.error("need 0 < --warmup < --seconds, --clients ≥ 1 and --rate > 0")

    work = args.work.resolve()
    store = (args.bentoml_home or work / "bentoml-home").resolve()
    out = (args.out or work / "soak").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.bentoml_home is None and not models_stored(store):
        work.mkdir(parents=True, exist_ok=True)
        prepare_store(store, work, {**os.environ, "BENTOML_HOME": str(store), **BENCH_ENV})
    home = private_home(store, out / "bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), **BENCH_ENV, **SOAK_LIMITS}
    kinds = make_kinds()

    server = start_server(env, out / "server.log")
    print(f"server ready in {server.ready_s} s ({server.rss_at_ready_mib:,.0f} MiB), log {server.log}", flush=True)
    try:
        results = soak(server.url, server.process.pid, kinds, args)
        results["health_at_end"] = server.health()
    finally:
        stop_server(server)
    log = server.log.read_text(errors="replace")
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(None),
        "git": git_state(),
        "settings": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "rate": args.rate,
            "bentoml_home": str(store),
            "limits": SOAK_LIMITS,
            "fd_slack": FD_SLACK,
            "rss_growth_limit": RSS_GROWTH_LIMIT,
            "tail_fraction": TAIL_FRACTION,
        },
        "server_ready_s": server.ready_s,
        "log_exceptions": log_exceptions(log),  # reported, not judged: an answer's status is what counts
        **results,
    }
    results["criteria"] = criteria(results)
    passed = all(c["passed"] for c in results["criteria"])
    results["passed"] = passed
    (out / "soak.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "soak.png")
    print()
    print(tables(results))
    exceptions = results["log_exceptions"]
    listed = ", ".join(f"{name} ×{count}" for name, count in sorted(exceptions.items(), key=lambda item: -item[1]))
    print(f"\nserver log: {sum(exceptions.values())} tracebacks{': ' + listed if listed else ''}")
    for problem in results["unexpected"][:20]:
        print(f"  unexpected: {problem}")
    print(f"\n{'PASS' if passed else 'FAIL'}; wrote {out / 'soak.json'}, {out / 'soak.png'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
