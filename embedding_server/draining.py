"""Graceful shutdown of a model service: it keeps serving until the API has finished its requests in flight.

BentoML's arbiter sends SIGTERM to every process at once. The API process then stops taking connections and finishes
the requests it holds, but those still need the model services, which would otherwise stop at once and fail them.
So a model service waits until no call has reached it for `idle_s` after the signal, then stops as uvicorn does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Activity:
    """The calls a process is serving, and when the last one ended."""

    in_flight: int = 0
    last_ended: float = field(default_factory=time.monotonic)

    def quiet_since(self, moment: float) -> float:
        """Seconds without a call since `moment` (0 while one is being served)."""
        return 0.0 if self.in_flight else time.monotonic() - max(moment, self.last_ended)


MODEL_SERVICE_ACTIVITY = Activity()


class ActivityMiddleware:
    """Counts a model service's calls into `activity`."""

    def __init__(self, app: ASGIApp, activity: Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.activity.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.activity.in_flight -= 1
            self.activity.last_ended = time.monotonic()


def exit_when_idle(activity: Activity, idle_s: float, max_wait_s: float, applies: Callable[[], bool]) -> None:
    """Makes this process's uvicorn act on SIGTERM (or SIGINT) only once `activity` has been quiet for `idle_s` since
    the signal, or after `max_wait_s`, when `applies()` says so at the signal; a second signal stops it at once.

    uvicorn installs `Server.handle_exit` as the signal handler when it starts serving, before BentoML creates the
    service, so this must run when the service's module is imported, in every process; `applies` tells the model
    services from the API at the signal.
    """
    import uvicorn

    stop_now = uvicorn.Server.handle_exit
    if getattr(stop_now, "waits_for_idle", False):
        return

    def handle_exit(server: uvicorn.Server, sig, frame) -> None:
        if getattr(server, "draining", False) or not applies():
            stop_now(server, sig, frame)
            return
        server.draining = True
        signalled = time.monotonic()

        def stop_when_idle() -> None:
            while activity.quiet_since(signalled) < idle_s and time.monotonic() - signalled < max_wait_s:
                time.sleep(0.05)
            stop_now(server, sig, frame)

        threading.Thread(target=stop_when_idle, name="drain", daemon=True).start()

    handle_exit.waits_for_idle = True
    uvicorn.Server.handle_exit = handle_exit
