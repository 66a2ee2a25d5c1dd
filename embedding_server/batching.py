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
import itertools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

import numpy as np

Inputs = TypeVar("Inputs", list, np.ndarray)
Result = TypeVar("Result")


class _Request(Generic[Inputs]):
    """One queued part of a caller's inputs."""

    def __init__(self, inputs: Inputs, cost: int, arrival: int) -> None:
        self.inputs = inputs
        self.cost = cost
        self.arrival = arrival
        self.future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.waiting = True
        """Queued, and counted in the queue's items: neither taken into a batch nor given up by its caller."""


class QueueFull(Exception):
    """The queue holds as many items as it may; the request was not queued."""


class BatchQueue(Generic[Inputs]):
    """Runs `forward` on batches of queued requests, each batch at most `max_batch_size` items and `max_batch_cost`
    (the sum of `item_cost` over its items: a text's tokens), with at most `concurrency` batches running at a time
    and at most `max_queued` items waiting.

    A request larger than half a batch is queued in parts of at most half a batch. Each batch starts with the oldest
    waiting part, so that every request moves on, and is filled with the cheapest waiting parts: as the oldest part
    leaves at least half of the batch free, a short request overtakes the parts of long ones and waits for at most
    the batches already running, however much long work is queued.
    """

    def __init__(
        self,
        forward: Callable[[Inputs], Awaitable[np.ndarray]],
        max_batch_size: int,
        concurrency: int = 1,
        max_queued: int | None = None,
        max_batch_cost: int | None = None,
        item_cost: Callable[[object], int] | None = None,
    ) -> None:
        self._forward = forward
        self._max_batch_size = max_batch_size
        self._max_batch_cost = max_batch_cost
        self._item_cost = item_cost or (lambda _: 1)
        self._concurrency = concurrency
        self._max_queued = max_queued
        self._queue: list[_Request[Inputs]] = []
        """Waiting parts in the order they arrived."""
        self._arrivals = itertools.count()
        self._queued_items = 0
        self._running: set[asyncio.Task] = set()

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(self, inputs: Inputs) -> np.ndarray:
        """The rows of `forward`'s output for `inputs`, computed with whatever else is queued. Raises QueueFull, at
        once, when queueing `inputs` would put more than `max_queued` items in the queue (a request that finds the
        queue empty is always taken): under overload a quick refusal that the client can retry beats a wait that
        only grows."""
        waiting = self._queued_items
        if self._max_queued is not None and waiting and waiting + len(inputs) > self._max_queued:
            raise QueueFull(f"{waiting} items are already waiting")
        parts = [_Request(part, cost, next(self._arrivals)) for part, cost in self._split(inputs)]
        for part in parts:
            self._queue.append(part)
            self._queued_items += len(part.inputs)
            # A caller that gives up (deadline, client gone) frees its place at once, not when the queue next moves.
            part.future.add_done_callback(lambda _, part=part: self._stop_waiting(part))
        self._dispatch()
        try:
            rows = [await part.future for part in parts]
        except BaseException:  # failed or given up: the request's other parts are not computed
            for part in parts:
                part.future.cancel()
            raise
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _split(self, inputs: Inputs) -> list[tuple[Inputs, int]]:
        """`inputs` in consecutive parts of at most half a batch (an item over that alone), with their costs."""
        max_part_size = max(1, self._max_batch_size // 2)
        max_part_cost = None if self._max_batch_cost is None else max(1, self._max_batch_cost // 2)
        parts, start, cost = [], 0, 0
        for index, item in enumerate(inputs):
            item_cost = self._item_cost(item)
            over_cost = max_part_cost is not None and cost + item_cost > max_part_cost
            if index > start and (index - start == max_part_size or over_cost):
                parts.append((inputs[start:index], cost))
                start, cost = index, 0
            cost += item_cost
        parts.append((inputs[start:], cost))
        return parts

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
        """The oldest waiting part, then the cheapest others while the batch's limits allow. A part whose caller has
        gone (its future cancelled) is dropped, not computed."""
        self._queue = [request for request in self._queue if not request.future.done()]
        if not self._queue:
            return []
        oldest, *others = self._queue
        batch, size, cost = [oldest], len(oldest.inputs), oldest.cost
        for request in sorted(others, key=lambda request: (request.cost, request.arrival)):
            fits_cost = self._max_batch_cost is None or cost + request.cost <= self._max_batch_cost
            if size + len(request.inputs) <= self._max_batch_size and fits_cost:
                batch.append(request)
                size += len(request.inputs)
                cost += request.cost
        taken = set(map(id, batch))
        self._queue = [request for request in self._queue if id(request) not in taken]
        for request in batch:
            self._stop_waiting(request)
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
