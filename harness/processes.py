"""The figures of a server's process tree: its resident memory, each process's RSS and open descriptors, a sampler
that records such figures over time, and the worker process of one BentoML service."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import psutil

from embedding_server.process_memory import tree_rss_bytes

MIB = 1024 * 1024

T = TypeVar("T")


def tree_rss_mib(root: psutil.Process) -> float:
    """Resident memory of `root` and all its descendants in MiB, the figure /health reports."""
    return tree_rss_bytes(root)[0] / MIB


def snapshot(root_pid: int) -> dict:
    """RSS (MiB) and open file descriptors of each process of the tree under `root_pid`, their sums and the sorted
    pids, all from one listing of the tree so that they describe the same moment; a process that exits meanwhile is
    left out."""
    root = psutil.Process(root_pid)
    processes = []
    for process in [root, *root.children(recursive=True)]:
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


class Sampler(Generic[T]):
    """Calls `take` every `interval_s` in a daemon thread until stopped and keeps what it returns in `samples`. A
    psutil.NoSuchProcess ends the sampling (the server's root process is gone); another psutil.Error skips one."""

    def __init__(self, take: Callable[[], T], interval_s: float) -> None:
        self.take = take
        self.interval_s = interval_s
        self.samples: list[T] = []
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.take())
            except psutil.NoSuchProcess:
                return
            except psutil.Error:
                pass  # e.g. a descriptor count denied for a moment: the next sample will tell
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()


def service_worker(root_pid: int, service: str) -> psutil.Process:
    """The process under `root_pid` that runs BentoML service `service` (text_model, image_model or embedding_api)."""
    for process in psutil.Process(root_pid).children(recursive=True):
        command = process.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == service:
            return process
    raise LookupError(f"no process serves {service}")
