"""Collects deliveries into batches: up to a size, or what arrived within a short wait or before a lull."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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

    async def next_batch(self, size: int, wait: float, stop: asyncio.Event) -> list[T]:
        """Block for the first delivery (or until stop is set, returning []), then fill up to `size`.

        The batch closes when it is full, when `wait` has passed since its first delivery, or when nothing
        arrived for a quarter of `wait`. A lull means the publishers paused: holding what is in hand until
        the full wait would add latency without making the batch any bigger. Under load deliveries keep
        arriving, so batches still fill up to `size` or `wait`.
        """
        if not self._items and not await self._first(stop):
            return []
        room = [self._max_weight if self._weigh is not None else 1]  # left to fill; only weighing spends it
        batch = self._take(size, room)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        lull = wait / 4
        while len(batch) < size and room[0] > 0:
            if self._items:
                batch += self._take(size - len(batch), room)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or stop.is_set() or not await self._arrival(min(remaining, lull)):
                break
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

    async def _arrival(self, timeout: float) -> bool:
        """Wait up to `timeout` for a delivery; True when one arrived."""
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
