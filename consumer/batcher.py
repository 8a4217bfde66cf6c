"""Collects deliveries into batches: up to a size, or what arrived within a short wait or before a lull."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage


class Inbox:
    """Deliveries handed over by aio-pika's consumer callback, waiting to be batched."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def put(self, message: AbstractIncomingMessage) -> None:
        self._queue.put_nowait(message)

    def drain(self) -> list[AbstractIncomingMessage]:
        drained = []
        while not self._queue.empty():
            drained.append(self._queue.get_nowait())
        return drained

    async def next_batch(self, size: int, wait: float, stop: asyncio.Event) -> list[AbstractIncomingMessage]:
        """Block for the first delivery (or until stop is set, returning []), then fill up to `size`.

        The batch closes when it is full, when `wait` has passed since its first delivery, or when nothing
        arrived for a quarter of `wait`. A lull means the publishers paused: holding what is in hand until
        the full wait would add latency without making the batch any bigger. Under load deliveries keep
        arriving, so batches still fill up to `size` or `wait`.
        """
        first = await self._first(stop)
        if first is None:
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        lull = wait / 4
        while len(batch) < size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or stop.is_set():
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), min(remaining, lull)))
            except TimeoutError:
                break
        return batch

    async def _first(self, stop: asyncio.Event) -> AbstractIncomingMessage | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        if stop.is_set():
            return None
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        # A delivery that raced the stop signal is still ours: it goes into the final batch.
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None
