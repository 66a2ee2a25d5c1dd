"""The real server under test: `bentoml serve .` on a free port, its start-up time and its memory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 300
RSS_INTERVAL_S = 0.5
STOP_GRACE_S = 30
MIB = 1024 * 1024


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_mib(root: psutil.Process) -> float:
    """Resident memory of `root` and all its descendants in MiB; processes that exit meanwhile count as 0."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / MIB


@dataclass
class RssSampler:
    """Samples the RSS of a process tree every 0.5 s in a daemon thread until stopped."""

    pid: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        root, started = psutil.Process(self.pid), time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append((round(time.monotonic() - started, 2), round(tree_rss_mib(root), 1)))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(RSS_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()

    @property
    def peak_mib(self) -> float:
        return max((mib for _, mib in self.samples), default=0.0)


@dataclass
class RunningServer:
    """A started `bentoml serve`: its URL, time to the first 200 on /health, and the RSS sampler of its tree."""

    url: str
    process: subprocess.Popen
    log: Path
    rss: RssSampler
    ready_s: float = 0.0
    rss_at_ready_mib: float = 0.0
    health_at_ready: dict = field(default_factory=dict)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def health(self) -> dict:
        return requests.get(self.url + "/health", timeout=10).json()


def start_server(env: dict[str, str], log: Path) -> RunningServer:
    """Starts `bentoml serve .` from the repository root in its own process group and waits until GET /health is
    200 (both models loaded). Raises RuntimeError, with the log's tail, when the server exits or is not ready in
    READY_TIMEOUT_S; the process is stopped then."""
    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    started = time.monotonic()
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [str(bentoml), "serve", ".", "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rss = RssSampler(process.pid)
    rss.start()
    server = RunningServer(f"http://127.0.0.1:{port}", process, log, rss)
    while time.monotonic() - started < READY_TIMEOUT_S:
        if process.poll() is not None:
            rss.stop()
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            response = requests.get(server.url + "/health", timeout=5)
            if response.status_code == 200:
                server.ready_s = round(time.monotonic() - started, 2)
                server.rss_at_ready_mib = round(tree_rss_mib(psutil.Process(process.pid)), 1)
                server.health_at_ready = response.json()
                return server
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"/health not 200 within {READY_TIMEOUT_S} s:\n{server.log_tail()}")


def stop_server(server: RunningServer) -> None:
    """SIGTERM to the server's process group, SIGKILL after STOP_GRACE_S; stops the RSS sampler."""
    server.rss.stop()
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
