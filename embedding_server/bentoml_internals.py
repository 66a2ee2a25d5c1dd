"""Every BentoML name or behaviour that this server relies on and BentoML does not document, in one place.

Each has a comment saying why no public API does the job, and tests/test_bentoml_pins.py fails with a clear message
when a BentoML (or uvicorn) upgrade changes one of them. One more is a matter of order, not of a name: a service's
__init__ runs inside uvicorn's signal capture (uvicorn.Server.serve installs its handlers, then starts the app, whose
start-up creates the service), which is where draining.py finds the handler it delays.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil

WORKER_SERVICE_FLAG = "--service-name"
"""How `bentoml serve` names the service a worker process runs, in the worker's command line. A model service must
know when the API worker beside it has exited (draining.py), and BentoML offers no public way to learn about the
other services' processes."""

OPENAPI_REF_TEMPLATE = "#/components/schemas/{model}"
"""Where BentoML's OpenAPI document keeps its schemas: the corrected document (openapi.py) adds its own beside them
and refers to them the same way."""

OPENAPI_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")
"""The error bodies that BentoML documents on every route, which this API does not answer with (openapi.py drops
them)."""

MODEL_SERVICE_TYPE = "service"
"""The value of the public `bentoml.server_context.service_type` in a worker of a dependency (a model service), where
the API's worker has "entry_service"; BentoML documents the attribute, not its values."""


def stop_usage_tracking_by_default() -> None:
    """BentoML's usage tracking stays off unless the operator opts in with BENTOML_DO_NOT_TRACK=false.

    The variable is public; but the `bentoml` CLI read it (through a functools.cache) before it imported the
    service, so setting it there changes nothing until that private cache is cleared."""
    from bentoml._internal.utils.analytics import usage_stats

    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    usage_stats.do_not_track.cache_clear()


def sibling_worker_alive(service_name: str) -> Callable[[], bool]:
    """Whether a worker of this process's arbiter (its parent, which started every service's workers) still runs
    `service_name`."""

    def alive() -> bool:
        try:
            siblings = psutil.Process(os.getppid()).children()
        except psutil.Error:
            return False
        for process in siblings:
            try:
                if process.status() != psutil.STATUS_ZOMBIE and worker_service(process.cmdline()) == service_name:
                    return True
            except psutil.Error:  # it has just exited
                continue
        return False

    return alive


def worker_service(command: list[str]) -> str | None:
    """The service that a `bentoml serve` worker with this command line runs, or None for another process."""
    if WORKER_SERVICE_FLAG not in command[:-1]:
        return None
    return command[command.index(WORKER_SERVICE_FLAG) + 1]
