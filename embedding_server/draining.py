"""Graceful shutdown: the API turns not ready before it stops taking connections, and a model service keeps serving
until the API process has finished and exited.

BentoML's arbiter sends SIGTERM to every worker at once. The API first reports itself not ready (/readyz 503) for
SHUTDOWN_DELAY_S while it still serves, so that a load balancer polling /readyz stops sending it requests, then stops
taking connections and finishes the requests it holds. Those still need the model services, which would otherwise
stop at once and fail them, so a model service goes on serving until no API worker is left beside it (or a
deadline has passed), then stops as uvicorn does.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

shutdown_requested = threading.Event()
"""Set at this process's first SIGTERM or SIGINT: from then on the API reports itself not ready."""

_HANDLED = (signal.SIGTERM, signal.SIGINT)
_installed = False


def delay_exit(stop_condition: Callable[[], Callable[[], bool]]) -> None:
    """Makes the server act on SIGTERM or SIGINT only once the condition that `stop_condition()` gives at the signal
    is true (it is polled every 0.1 s); until then the process serves as before, and `shutdown_requested` is set.
    While it waits, a repeated SIGTERM is ignored (the arbiter forwards the signal that the whole process group
    already got: Ctrl-C, `kill -- -pgid`, systemd); a second SIGINT, a second Ctrl-C, stops it at once.

    Call it from a service's __init__: uvicorn installs its own handlers before it starts the app, whose start-up
    creates the service (bentoml_internals.py), so the handler found here is uvicorn's, and it is called in the end.
    Only the first call in a process counts: `bentoml serve --development` creates all three services in one.
    """
    global _installed
    if _installed:
        return
    _installed = True
    stop_now = {sig: signal.getsignal(sig) for sig in _HANDLED}
    if not all(callable(handler) for handler in stop_now.values()):
        raise RuntimeError(f"no server signal handler to delay: {stop_now}")

    def handle(sig: int, frame) -> None:
        if shutdown_requested.is_set():
            if sig == signal.SIGINT:
                stop_now[sig](sig, frame)
            return
        shutdown_requested.set()
        may_stop = stop_condition()
        if may_stop():
            stop_now[sig](sig, frame)
            return

        def stop_when_allowed() -> None:
            while not may_stop():
                time.sleep(0.1)
            stop_now[sig](sig, frame)

        threading.Thread(target=stop_when_allowed, name="drain", daemon=True).start()

    for sig in _HANDLED:
        signal.signal(sig, handle)


def api_gone_or_after(api_alive: Callable[[], bool], max_wait_s: float) -> Callable[[], bool]:
    """A model service's stop condition: no API worker is left beside it, or `max_wait_s` have passed."""
    deadline = time.monotonic() + max_wait_s
    return lambda: not api_alive() or time.monotonic() >= deadline


def after(seconds: float) -> Callable[[], bool]:
    """The API's stop condition: `seconds` have passed (SHUTDOWN_DELAY_S), in which load balancers that poll /readyz
    see it fail and stop sending requests, before the listener closes."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline
