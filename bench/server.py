"""The real server under test: `bentoml serve .` on a free port, its start-up time and its memory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from harness.processes import Sampler, tree_rss_mib
from harness.servers import Server, free_port, serve, stop, wait_ready

READY_TIMEOUT_S = 300
READY_INTERVAL_S = 0.1
RSS_INTERVAL_S = 0.5


class RssSampler(Sampler[tuple[float, float]]):
    """The RSS of the process tree under `pid` every RSS_INTERVAL_S: (seconds since the start, MiB)."""

    def __init__(self, pid: int) -> None:
        root, started = psutil.Process(pid), time.monotonic()
        super().__init__(lambda: (round(time.monotonic() - started, 2), round(tree_rss_mib(root), 1)), RSS_INTERVAL_S)

    @property
    def peak_mib(self) -> float:
        return max((mib for _, mib in self.samples), default=0.0)


@dataclass
class RunningServer(Server):
    """A started `bentoml serve`, its time to the first 200 on /health, and the RSS sampler of its tree."""

    rss: RssSampler
    ready_s: float = 0.0
    rss_at_ready_mib: float = 0.0
    health_at_ready: dict = field(default_factory=dict)

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=10).json()


def start_server(env: dict[str, str], log: Path) -> RunningServer:
    """Starts `bentoml serve .` with the environment `env` and waits until GET /health is 200 (both models loaded).
    Raises RuntimeError, with the log's tail, when the server exits or is not ready in READY_TIMEOUT_S; the process
    is stopped then."""
    port = free_port()
    started = time.monotonic()
    process = serve(".", port, env, log)
    rss = RssSampler(process.pid)
    rss.start()
    server = RunningServer(f"http://127.0.0.1:{port}", process, log, rss)

    def health() -> dict | None:
        try:
            response = requests.get(server.url + "/health", timeout=5)
            if response.status_code == 200:
                server.ready_s = round(time.monotonic() - started, 2)
                server.rss_at_ready_mib = round(tree_rss_mib(psutil.Process(process.pid)), 1)
                return response.json()
        except requests.RequestException:
            pass  # not listening yet
        return None

    try:
        server.health_at_ready = wait_ready(process, log, health, READY_TIMEOUT_S, READY_INTERVAL_S)
    except RuntimeError:
        rss.stop()
        raise
    return server


def stop_server(server: RunningServer) -> None:
    """Stops the server (harness.servers.stop) and its RSS sampler."""
    server.rss.stop()
    stop(server.process)
