"""Group commit: a batch is what arrived while the previous commit ran, up to a size or a weight."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class Inbox(Generic[T]):
    """Deliveries handed over by the channel's consumer callback, waiting to be batched.

    A deque and one waiter future rather than an asyncio.Queue: a put is an append, and a batch is taken
    from what already arrived without awaiting anything per delivery (the queue's get costs a coroutine and,
    under wait_for, a task for every item).
    """

    def __init__(self, weigh: Callable[[T], int] | None = None, max_weight: int = 0) -> None:
        """With `weigh` and `max_weight`, a batch also closes once its items weigh that much (the first
        item always fits): the consumer weighs message bodies, so that batches of big envelopes stay small
        enough to hold two decoded at once (one committing, the next waiting)."""
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._weigh = weigh if max_weight > 0 else None
        self._max_weight = max_weight
        self.opened_at = 0.0  # loop time when the last batch's first delivery was in hand

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> list[T]:
        drained = list(self._items)
        self._items.clear()
        return drained

    def wake(self) -> None:
        """Wake a batch waiting on the commit in flight: the pipeline calls it when that commit ends."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(
        self,
        size: int,
        stop: asyncio.Event,
        busy: Callable[[], bool] = lambda: False,
        prepare: Callable[[list[T]], list[U]] | None = None,
        linger: float = 0.0,
    ) -> list[U]:
        """Block for the first delivery (or until stop is set, returning []), then group commit: take what
        is there, and while a commit runs (`busy()`), everything that arrives until it ends (the caller
        calls `wake()` then) or the batch is full. With nothing committing the batch closes at once: a lone
        delivery never waits for company, and under load a batch is what arrived during the previous
        commit, so batches grow exactly as far as the store is slower than the arrivals.

        `prepare` turns each chunk taken into what the batch holds (the consumer decodes there, so decoding
        overlaps the commit in flight rather than following it). `linger` > 0 also keeps a batch open that
        long after its first delivery while nothing commits, closing sooner after a lull of a quarter of it:
        fewer, larger transactions for a trickle, at that much latency.
        """
        if not self._items and not await self._first(stop):
            return []
        room = [self._max_weight if self._weigh is not None else 1]  # left to fill; only weighing spends it
        batch: list[U] = []
        taken = 0
        loop = asyncio.get_running_loop()
        self.opened_at = loop.time()
        deadline = self.opened_at + linger
        while True:
            if self._items:
                chunk = self._take(size - taken, room)
                taken += len(chunk)
                batch += chunk if prepare is None else prepare(chunk)  # type: ignore[arg-type]
            if taken >= size or room[0] <= 0 or stop.is_set():
                return batch
            if busy():
                await self._arrival(None)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._arrival(min(remaining, linger / 4)):
                return batch

    def _take(self, count: int, room: list[int]) -> list[T]:
        items = self._items
        if self._weigh is not None:
            return self._take_weighed(count, room, self._weigh)
        if count >= len(items):
            taken = list(items)
            items.clear()
            return taken
        return [items.popleft() for _ in range(count)]

    def _take_weighed(self, count: int, room: list[int], weigh: Callable[[T], int]) -> list[T]:
        items = self._items
        taken: list[T] = []
        while items and len(taken) < count and room[0] > 0:
            item = items.popleft()
            room[0] -= weigh(item)
            taken.append(item)
        return taken

    async def _arrival(self, timeout: float | None) -> bool:
        """Wait up to `timeout` (None: until woken) for a delivery; True when one arrived."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            pass
        finally:
            self._waiter = None
        return bool(self._items)

    async def _first(self, stop: asyncio.Event) -> bool:
        """Wait for a delivery or the stop signal; True when a delivery is in hand."""
        if stop.is_set():
            return False
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiter = None
            stopper.cancel()
            waiter.cancel()
        # A delivery that raced the stop signal is still ours: it goes into the final batch.
        return bool(self._items)
