"""`bentoml serve` processes: a free port, a BENTOML_HOME of the server's own, the start, the wait until it is
ready, and the stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"
STOP_GRACE_S = 30
LOG_TAIL_LINES = 60

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_home(store: Path, into: Path) -> Path:
    """Makes `into` a BENTOML_HOME of one server's own that links the models and bentos of the store `store`, and
    returns it: a starting server clears its home's Prometheus folder, which would blank the /metrics of another
    server running from the same home."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("models", "bentos"):
        link = into / name
        if link.is_symlink():
            link.unlink()  # left by an earlier run, perhaps for another store
        if (store / name).is_dir():
            link.symlink_to((store / name).resolve())
    return into


def serve(target: str, port: int, env: Mapping[str, str | None], log: Path, append: bool = False) -> subprocess.Popen:
    """Starts `bentoml serve TARGET` on 127.0.0.1:PORT from the repository root with the environment `env` (a None
    value leaves that variable out) and its output into `log`, appended to when `append` (a restarted server's).
    It runs in a session of its own, so that `stop` can signal its process group."""
    with log.open("a" if append else "w") as output:
        return subprocess.Popen(
            [str(BENTOML), "serve", target, "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT,
            env={name: value for name, value in env.items() if value is not None},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(
    process: subprocess.Popen, log: Path, ready: Callable[[], T | None], timeout_s: float, interval_s: float
) -> T:
    """Calls `ready` every `interval_s` until it returns something other than None, and returns that. RuntimeError,
    with the log's tail, when the server exits first or is not ready within `timeout_s` (it is stopped then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode} (log {log}):\n{log_tail(log)}")
        answer = ready()
        if answer is not None:
            return answer
        time.sleep(interval_s)
    stop(process)
    raise RuntimeError(f"bentoml serve not ready in {timeout_s:.0f} s (log {log}):\n{log_tail(log)}")


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the server's process group, as `docker stop` sends it; SIGKILL to all of it after `grace_s`."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill_tree(process)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL to every process of the server at once, as when its container or node is lost (the workers run in
    sessions of their own, so the process group is not enough)."""
    root = psutil.Process(process.pid)
    for member in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Server:
    """A started `bentoml serve`: its URL, its main process and its log."""

    url: str
    process: subprocess.Popen
    log: Path

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kwargs)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log, lines)
