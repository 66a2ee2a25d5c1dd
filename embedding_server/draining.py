"""Graceful shutdown: the API turns not ready before it stops taking connections, and a model service keeps serving
until the API process has finished and exited.

BentoML's arbiter sends SIGTERM to every worker at once. The API first reports itself not ready (/readyz 503) for
SHUTDOWN_DELAY_S while it still serves, so that a load balancer polling /readyz stops sending it requests, then stops
taking connections and finishes the requests it holds. Those still need the model services, which would otherwise
stop at once and fail them, so a model service goes on serving until no API worker is left beside it (or a
deadline has passed), then stops as uvicorn does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import psutil


def sibling_alive(service_name: str) -> Callable[[], bool]:
    """Whether a worker of this process's arbiter (its parent) still serves `service_name`."""

    def alive() -> bool:
        try:
            siblings = psutil.Process(os.getppid()).children()
        except psutil.Error:
            return False
        for process in siblings:
            try:
                command = process.cmdline()
                if process.status() == psutil.STATUS_ZOMBIE or "--service-name" not in command:
                    continue
            except psutil.Error:  # it has just exited
                continue
            if command[command.index("--service-name") + 1] == service_name:
                return True
        return False

    return alive


shutdown_requested = threading.Event()
"""Set at this process's first SIGTERM or SIGINT: from then on the API reports itself not ready."""


def delay_exit(stop_condition: Callable[[], Callable[[], bool]]) -> None:
    """Makes this process's uvicorn act on SIGTERM or SIGINT only once the condition that `stop_condition()` gives at
    the signal is true (it is polled every 0.1 s); until then the process serves as before, and
    `shutdown_requested` is set. While it waits, a repeated SIGTERM is ignored (the arbiter forwards the signal that
    the whole process group already got: Ctrl-C, `kill -- -pgid`, systemd); a second SIGINT, a second Ctrl-C, stops
    it at once, as in uvicorn.

    uvicorn installs `Server.handle_exit` as the signal handler when it starts serving, before BentoML creates the
    service, so this must run when the service's module is imported, in every process; `stop_condition` tells the
    model services from the API at the signal.
    """
    import uvicorn

    stop_now = uvicorn.Server.handle_exit
    if getattr(stop_now, "delays_exit", False):
        return

    def handle_exit(server: uvicorn.Server, sig: int, frame) -> None:
        if shutdown_requested.is_set():
            if sig == signal.SIGINT:
                stop_now(server, sig, frame)
            return
        shutdown_requested.set()
        may_stop = stop_condition()
        if may_stop():
            stop_now(server, sig, frame)
            return

        def stop_when_allowed() -> None:
            while not may_stop():
                time.sleep(0.1)
            stop_now(server, sig, frame)

        threading.Thread(target=stop_when_allowed, name="drain", daemon=True).start()

    handle_exit.delays_exit = True
    uvicorn.Server.handle_exit = handle_exit


def api_gone_or_after(api_alive: Callable[[], bool], max_wait_s: float) -> Callable[[], bool]:
    """A model service's stop condition: no API worker is left beside it, or `max_wait_s` have passed."""
    deadline = time.monotonic() + max_wait_s
    return lambda: not api_alive() or time.monotonic() >= deadline


def after(seconds: float) -> Callable[[], bool]:
    """The API's stop condition: `seconds` have passed (SHUTDOWN_DELAY_S), in which load balancers that poll /readyz
    see it fail and stop sending requests, before the listener closes."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline
