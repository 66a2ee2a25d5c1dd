"""Graceful shutdown of a model service: it keeps serving until the API process has finished and exited.

BentoML's arbiter sends SIGTERM to every worker at once. The API then stops taking connections and finishes the
requests it holds, but those still need the model services, which would otherwise stop at once and fail them. So a
model service goes on serving until no API worker is left beside it (or `max_wait_s` has passed), then stops as
uvicorn does.
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


def exit_after(api_alive: Callable[[], bool], max_wait_s: float, applies: Callable[[], bool]) -> None:
    """Makes this process's uvicorn act on SIGTERM or SIGINT only once `api_alive()` is false, or after `max_wait_s`,
    when `applies()` says so at the signal. While it waits, a repeated SIGTERM is ignored (the arbiter forwards the
    signal that the whole process group already got: Ctrl-C, `kill -- -pgid`, systemd); a second SIGINT, a second
    Ctrl-C, stops it at once, as in uvicorn.

    uvicorn installs `Server.handle_exit` as the signal handler when it starts serving, before BentoML creates the
    service, so this must run when the service's module is imported, in every process; `applies` tells the model
    services from the API at the signal.
    """
    import uvicorn

    stop_now = uvicorn.Server.handle_exit
    if getattr(stop_now, "waits_for_the_api", False):
        return

    def handle_exit(server: uvicorn.Server, sig: int, frame) -> None:
        if not applies():
            stop_now(server, sig, frame)
            return
        if getattr(server, "draining", False):
            if sig == signal.SIGINT:
                stop_now(server, sig, frame)
            return
        server.draining = True
        signalled = time.monotonic()

        def stop_when_the_api_is_gone() -> None:
            while api_alive() and time.monotonic() - signalled < max_wait_s:
                time.sleep(0.1)
            stop_now(server, sig, frame)

        threading.Thread(target=stop_when_the_api_is_gone, name="drain", daemon=True).start()

    handle_exit.waits_for_the_api = True
    uvicorn.Server.handle_exit = handle_exit
