"""The continuous batcher on its own, with a forward pass whose progress the test controls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedding_server.batching import BatchQueue, ForwardThread, QueueFull


class GatedForward:
    """Records each batch and holds it until the test opens the gate; row i of a batch is [item value]."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> np.ndarray:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_on in items:
            raise RuntimeError(f"forward failed on {self.fail_on}")
        return np.array(items, dtype=np.float32)[:, None]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_lone_request_goes_at_once_and_later_ones_share_the_next_batch():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=10)
        first = asyncio.ensure_future(queue.submit([1]))
        await settle()
        assert forward.batches == [[1]]  # sent without waiting for company
        rest = [asyncio.ensure_future(queue.submit([10 * i, 10 * i + 1])) for i in range(1, 4)]
        await settle()
        assert forward.batches == [[1]]  # queued while the first batch runs
        forward.gate.set()
        results = await asyncio.gather(first, *rest)
        assert forward.batches == [[1], [10, 11, 20, 21, 30, 31]]
        assert [r[:, 0].tolist() for r in results] == [[1], [10, 11], [20, 21], [30, 31]]

    run(scenario())


def test_batches_start_with_the_oldest_request_and_fill_up_with_the_smallest():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=4)
        blocker = asyncio.ensure_future(queue.submit([0]))
        await settle()
        sizes = [3, 2, 2, 6, 1]
        requests = [asyncio.ensure_future(queue.submit(list(range(100 * n, 100 * n + n)))) for n in sizes]
        await settle()
        forward.gate.set()
        results = await asyncio.gather(blocker, *requests)
        # The 3 and the 6 are queued in parts of at most 2, half a batch; each batch takes the oldest part, then
        # the smallest that fit.
        assert forward.batches == [[0], [300, 301, 302, 100], [200, 201, 200, 201], [600, 601, 602, 603], [604, 605]]
        assert [r[:, 0].tolist() for r in results[1:]] == [list(range(100 * n, 100 * n + n)) for n in sizes]

    run(scenario())


def test_a_token_budget_bounds_each_batch_and_a_short_request_overtakes_long_ones():
    async def scenario():
        forward = GatedForward()
        # Items are "texts" whose cost is their value's tens: 40 costs 4.
        queue = BatchQueue(forward, max_batch_size=100, max_batch_cost=8, item_cost=lambda item: item // 10)
        blocker = asyncio.ensure_future(queue.submit([10]))
        await settle()
        long_requests = [asyncio.ensure_future(queue.submit([40, 40])) for _ in range(3)]  # each a whole batch's cost
        await settle()
        short = asyncio.ensure_future(queue.submit([10]))
        await settle()
        forward.gate.set()
        await asyncio.gather(blocker, short, *long_requests)
        assert all(sum(item // 10 for item in batch) <= 8 for batch in forward.batches)
        # Each long request is queued in two parts of half the budget, so the oldest part leaves room: the short
        # request goes in the first batch after the blocker.
        assert forward.batches[1] == [40, 10]
        assert forward.batches[2:] == [[40, 40], [40, 40], [40]]

    run(scenario())


def test_the_oldest_part_goes_first_so_short_requests_cannot_starve_a_long_one():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=2)
        blocker = asyncio.ensure_future(queue.submit([0]))
        await settle()
        long = asyncio.ensure_future(queue.submit([1, 2, 3, 4]))
        shorts = [asyncio.ensure_future(queue.submit([10 + n])) for n in range(6)]
        await settle()
        forward.gate.set()
        await asyncio.gather(blocker, long, *shorts)
        assert forward.batches[1:3] == [[1, 2], [3, 4]]  # not behind the six short ones

    run(scenario())


def test_a_request_in_parts_fails_whole_and_its_other_parts_are_not_computed():
    async def scenario():
        forward = GatedForward(fail_on=2)
        queue = BatchQueue(forward, max_batch_size=2)
        request = asyncio.ensure_future(queue.submit([1, 2, 3, 4, 5, 6]))
        await settle()
        forward.gate.set()
        with pytest.raises(RuntimeError, match="failed on 2"):
            await request
        await settle()
        assert forward.batches == [[1, 2]]  # the second call was queued behind it and given up with the request
        assert queue.queued_items == 0

    run(scenario())


def test_a_failing_batch_fails_only_its_own_requests():
    async def scenario():
        forward = GatedForward(fail_on=66)
        queue = BatchQueue(forward, max_batch_size=2)
        blocker = asyncio.ensure_future(queue.submit([0]))
        await settle()
        doomed = [asyncio.ensure_future(queue.submit([n])) for n in (65, 66)]
        fine = asyncio.ensure_future(queue.submit([67]))
        await settle()
        forward.gate.set()
        await blocker
        for request in doomed:
            with pytest.raises(RuntimeError, match="failed on 66"):
                await request
        assert (await fine)[:, 0].tolist() == [67]
        assert (await queue.submit([68]))[:, 0].tolist() == [68]  # the queue goes on

    run(scenario())


def test_a_request_whose_caller_left_is_not_computed():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=10)
        blocker = asyncio.ensure_future(queue.submit([0]))
        await settle()
        gone = asyncio.ensure_future(queue.submit([1]))
        kept = asyncio.ensure_future(queue.submit([2]))
        await settle()
        gone.cancel()
        forward.gate.set()
        await asyncio.gather(blocker, kept)
        assert forward.batches == [[0], [2]]

    run(scenario())


def test_concurrency_keeps_that_many_batches_in_flight():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=1, concurrency=2)
        requests = [asyncio.ensure_future(queue.submit([n])) for n in range(4)]
        await settle()
        assert forward.batches == [[0], [1]]
        forward.gate.set()
        await asyncio.gather(*requests)
        assert forward.batches == [[0], [1], [2], [3]]

    run(scenario())


def test_arrays_are_concatenated_and_a_blocking_forward_runs_off_the_event_loop():
    seen_shapes = []

    def forward(pixels: np.ndarray) -> np.ndarray:
        seen_shapes.append(pixels.shape)
        return pixels.reshape(len(pixels), -1).sum(axis=1, keepdims=True).astype(np.float32)

    async def scenario():
        queue = BatchQueue(ForwardThread().runs(forward), max_batch_size=8)
        images = [np.full((n, 2, 2, 3), n, dtype=np.uint8) for n in (1, 2, 3)]
        results = await asyncio.gather(*(queue.submit(batch) for batch in images))
        assert [r[:, 0].tolist() for r in results] == [[12.0], [24.0, 24.0], [36.0, 36.0, 36.0]]

    run(scenario())
    assert sum(shape[0] for shape in seen_shapes) == 6


def test_a_forward_pass_with_the_wrong_number_of_rows_fails_its_batch():
    async def short_forward(items: list[int]) -> np.ndarray:
        return np.zeros((len(items) - 1, 1), dtype=np.float32)

    async def scenario():
        with pytest.raises(RuntimeError, match="returned 1 rows for 2 inputs"):
            await BatchQueue(short_forward, max_batch_size=4).submit([1, 2])

    run(scenario())


def test_callers_are_not_left_waiting_when_the_batch_is_cancelled():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=4)
        request = asyncio.ensure_future(queue.submit([1]))
        await settle()
        for task in list(queue._running):  # what the event loop does to pending tasks when the server stops
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    run(scenario())


def test_a_full_queue_refuses_at_once_and_takes_again_once_drained():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=8, max_queued=3)
        running = asyncio.ensure_future(queue.submit([1, 2]))  # taken at once: nothing waits
        await settle()
        waiting = asyncio.ensure_future(queue.submit([3, 4, 5]))  # three items wait
        await settle()
        with pytest.raises(QueueFull):
            await queue.submit([6])
        assert queue.queued_items == 3
        forward.gate.set()
        await asyncio.gather(running, waiting)
        assert queue.queued_items == 0
        assert len(await queue.submit([7])) == 1

    run(scenario())


def test_a_request_alone_may_exceed_the_queue_limit():
    async def scenario():
        forward = GatedForward()
        forward.gate.set()
        queue = BatchQueue(forward, max_batch_size=8, max_queued=2)
        assert len(await queue.submit([1, 2, 3, 4])) == 4

    run(scenario())


def test_a_caller_that_gives_up_frees_its_place_at_once():
    async def scenario():
        forward = GatedForward()
        queue = BatchQueue(forward, max_batch_size=8, max_queued=3)
        running = asyncio.ensure_future(queue.submit([1]))
        await settle()
        gives_up = asyncio.ensure_future(queue.submit([2, 3, 4]))
        await settle()
        assert queue.queued_items == 3
        gives_up.cancel()  # its deadline passed, or its client left, while the model is still busy
        await settle()
        assert queue.queued_items == 0
        replacement = asyncio.ensure_future(queue.submit([5, 6, 7]))  # not refused: the place is free
        await settle()
        forward.gate.set()
        assert len(await replacement) == 3 and len(await running) == 1
        assert forward.batches == [[1], [5, 6, 7]]  # the three that were given up were never computed

    run(scenario())
