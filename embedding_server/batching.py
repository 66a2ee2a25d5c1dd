"""Continuous batching: whatever queued while the previous batch ran goes out as the next batch, at once.

The API coalesces concurrent requests for a model into one call to its model service, so that under load the model
service handles a few large calls instead of one HTTP call per request, each one forward pass in its ForwardThread.
BentoML's adaptive batching was measured here and replaced (README, Performance): its dispatcher learns how long to
hold requests from the waits it saw under load, so after a burst a lone request was held for hundreds of
milliseconds, and its one deadline both batches and sheds requests. Here a request never waits for company: when
nothing runs it goes at once, and under load batches fill by themselves while the previous runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

Inputs = TypeVar("Inputs", list, np.ndarray)
Result = TypeVar("Result")


class _Request(Generic[Inputs]):
    def __init__(self, inputs: Inputs) -> None:
        self.inputs = inputs
        self.future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.waiting = True
        """Queued, and counted in the queue's items: neither taken into a batch nor given up by its caller."""


class QueueFull(Exception):
    """The queue holds as many items as it may; the request was not queued."""


class BatchQueue(Generic[Inputs]):
    """Runs `forward` on batches made of whole queued requests, at most `max_batch_size` items each (a larger request
    goes alone), with at most `concurrency` batches running at a time, and at most `max_queued` items waiting."""

    def __init__(
        self,
        forward: Callable[[Inputs], Awaitable[np.ndarray]],
        max_batch_size: int,
        concurrency: int = 1,
        max_queued: int | None = None,
    ) -> None:
        self._forward = forward
        self._max_batch_size = max_batch_size
        self._concurrency = concurrency
        self._max_queued = max_queued
        self._queue: deque[_Request[Inputs]] = deque()
        self._queued_items = 0
        self._running: set[asyncio.Task] = set()

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(self, inputs: Inputs) -> np.ndarray:
        """The rows of `forward`'s output for `inputs`, computed in one batch with whatever else is queued. Raises
        QueueFull, at once, when queueing `inputs` would put more than `max_queued` items in the queue (a request
        that finds the queue empty is always taken): under overload a quick refusal that the client can retry beats
        a wait that only grows."""
        waiting = self._queued_items
        if self._max_queued is not None and waiting and waiting + len(inputs) > self._max_queued:
            raise QueueFull(f"{waiting} items are already waiting")
        request = _Request(inputs)
        self._queue.append(request)
        self._queued_items += len(inputs)
        # A caller that gives up (deadline, client gone) frees its place at once, not when the queue next moves.
        request.future.add_done_callback(lambda _: self._stop_waiting(request))
        self._dispatch()
        return await request.future

    def _stop_waiting(self, request: _Request[Inputs]) -> None:
        if request.waiting:
            request.waiting = False
            self._queued_items -= len(request.inputs)

    def _dispatch(self) -> None:
        while len(self._running) < self._concurrency and (batch := self._take_batch()):
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._dispatch()

    async def _run(self, batch: list[_Request[Inputs]]) -> None:
        try:
            inputs = combine([request.inputs for request in batch])
            rows = await self._forward(inputs)
            if len(rows) != len(inputs):
                raise RuntimeError(f"the forward pass returned {len(rows)} rows for {len(inputs)} inputs")
            start = 0
            for request in batch:
                end = start + len(request.inputs)
                if not request.future.done():
                    request.future.set_result(rows[start:end])
                start = end
        except Exception as exc:  # this batch's requests fail; the queue goes on
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        finally:  # cancelled (the server stopping): no caller is left waiting
            for request in batch:
                if not request.future.done():
                    request.future.cancel()

    def _take_batch(self) -> list[_Request[Inputs]]:
        """The longest run of queued requests that fits `max_batch_size` items. A request whose caller has gone (its
        future cancelled) is dropped, not computed."""
        batch: list[_Request[Inputs]] = []
        size = 0
        while self._queue:
            request = self._queue[0]
            if request.future.done():
                self._queue.popleft()
                continue
            if batch and size + len(request.inputs) > self._max_batch_size:
                break
            batch.append(self._queue.popleft())
            self._stop_waiting(request)
            size += len(request.inputs)
        return batch


class ForwardThread:
    """The one thread that runs a model process's forward passes: the event loop stays free to take requests, and
    two passes (CLIP's image and text towers share a process) never compete for the same cores."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    def runs(self, forward: Callable[[Inputs], np.ndarray]) -> Callable[[Inputs], Awaitable[np.ndarray]]:
        """The blocking `forward` as a coroutine function that runs it in this thread."""

        async def run(inputs: Inputs) -> np.ndarray:
            return await self.call(forward, inputs)

        return run

    async def call(self, function: Callable[..., Result], *args: object) -> Result:
        """`function(*args)` in this thread: after the forward passes already running, never beside them."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)


def combine(parts: Sequence[Inputs]) -> Inputs:
    """One input from the requests' inputs: lists are joined, arrays concatenated along the first axis."""
    if isinstance(parts[0], np.ndarray):
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    return [item for part in parts for item in part]
