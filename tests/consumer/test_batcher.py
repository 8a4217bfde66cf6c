"""Inbox.next_batch: up to a size, or what arrived within the wait or before a lull; stop ends a wait."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from aio_pika.abc import AbstractIncomingMessage

from consumer.batcher import Inbox


class Delivery:
    """A stand-in for a delivery: the Inbox only moves messages around, it never looks inside."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Delivery({self.n})"


def delivery(n: int) -> AbstractIncomingMessage:
    return cast(AbstractIncomingMessage, Delivery(n))


async def parked(task: asyncio.Task[list[AbstractIncomingMessage]]) -> None:
    """Let next_batch run until it blocks waiting (a few loop steps; no wall-clock sleep)."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()


async def filled(count: int) -> tuple[Inbox, list[AbstractIncomingMessage]]:
    inbox = Inbox()
    items = [delivery(n) for n in range(count)]
    for item in items:
        await inbox.put(item)
    return inbox, items


async def test_a_batch_holds_at_most_size_items_in_arrival_order() -> None:
    inbox, items = await filled(5)
    stop = asyncio.Event()

    first = await inbox.next_batch(3, 10.0, stop)
    second = await inbox.next_batch(3, 0.01, stop)

    assert first == items[:3]
    assert second == items[3:]


async def test_a_full_batch_returns_without_waiting_for_the_wait() -> None:
    inbox, items = await filled(4)

    started = time.monotonic()
    batch = await inbox.next_batch(4, 10.0, asyncio.Event())

    assert batch == items
    assert time.monotonic() - started < 1.0


async def test_a_partial_batch_closes_after_a_lull_of_a_quarter_of_the_wait() -> None:
    inbox, items = await filled(2)

    started = time.monotonic()
    batch = await inbox.next_batch(100, 0.2, asyncio.Event())
    elapsed = time.monotonic() - started

    assert batch == items
    assert 0.04 <= elapsed < 0.15


async def test_a_steady_trickle_is_batched_until_the_wait_ends() -> None:
    inbox, items = await filled(1)
    stop = asyncio.Event()

    async def trickle() -> None:
        for i in range(100):
            await asyncio.sleep(0.01)  # well inside the lull of 0.05s, so the batch stays open
            await inbox.put(delivery(100 + i))
            if stop.is_set():
                return

    feeder = asyncio.create_task(trickle())
    started = time.monotonic()
    batch = await inbox.next_batch(1000, 0.2, asyncio.Event())
    elapsed = time.monotonic() - started
    stop.set()
    await feeder

    assert batch[0] == items[0]
    assert len(batch) > 5
    assert 0.19 <= elapsed < 1.0


async def test_deliveries_arriving_during_the_wait_join_the_batch() -> None:
    inbox, items = await filled(1)
    late = [delivery(10), delivery(11)]

    async def trickle() -> None:
        for item in late:
            await asyncio.sleep(0.01)  # each arrives while next_batch waits for more
            await inbox.put(item)

    feeder = asyncio.create_task(trickle())
    batch = await inbox.next_batch(3, 5.0, asyncio.Event())
    await feeder

    assert batch == items + late


async def test_a_delivery_after_the_wait_is_left_for_the_next_batch() -> None:
    inbox, items = await filled(1)
    stop = asyncio.Event()

    batch = await inbox.next_batch(10, 0.02, stop)
    later = delivery(99)
    await inbox.put(later)

    assert batch == items
    assert inbox.drain() == [later]


async def test_the_first_delivery_is_awaited_however_long_it_takes() -> None:
    inbox = Inbox()
    item = delivery(1)
    task = asyncio.create_task(inbox.next_batch(10, 0.01, asyncio.Event()))
    await asyncio.sleep(0.05)
    assert not task.done()

    await inbox.put(item)

    assert await asyncio.wait_for(task, 1.0) == [item]


async def test_stop_already_set_on_an_empty_inbox_returns_an_empty_batch() -> None:
    stop = asyncio.Event()
    stop.set()

    assert await Inbox().next_batch(10, 10.0, stop) == []


async def test_stop_set_while_waiting_on_an_empty_inbox_returns_an_empty_batch() -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.next_batch(10, 10.0, stop))
    await parked(task)

    stop.set()

    assert await asyncio.wait_for(task, 1.0) == []
    assert inbox.drain() == []


async def test_stop_with_deliveries_in_hand_still_returns_them_as_a_final_batch() -> None:
    inbox, items = await filled(3)
    stop = asyncio.Event()
    stop.set()

    assert await inbox.next_batch(10, 10.0, stop) == items


async def test_stop_ends_the_wait_for_more_once_the_first_delivery_arrived() -> None:
    inbox, items = await filled(1)
    stop = asyncio.Event()
    stop.set()

    started = time.monotonic()
    batch = await inbox.next_batch(10, 10.0, stop)

    assert batch == items
    assert time.monotonic() - started < 1.0


async def test_a_delivery_that_races_the_stop_is_kept() -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    item = delivery(1)
    task = asyncio.create_task(inbox.next_batch(10, 10.0, stop))
    await parked(task)

    # Both in the same step of the loop: the getter and the stop waiter complete together.
    await inbox.put(item)
    stop.set()

    assert await asyncio.wait_for(task, 1.0) == [item]
    assert inbox.drain() == []


async def test_a_stop_that_races_a_delivery_keeps_the_delivery() -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    item = delivery(1)
    task = asyncio.create_task(inbox.next_batch(10, 10.0, stop))
    await parked(task)

    stop.set()
    await inbox.put(item)

    batch = await asyncio.wait_for(task, 1.0)
    assert batch + inbox.drain() == [item]


async def test_drain_empties_the_inbox_in_arrival_order() -> None:
    inbox, items = await filled(4)

    assert inbox.drain() == items
    assert inbox.drain() == []


async def test_a_batch_closes_once_its_items_weigh_the_limit_and_the_first_item_always_fits() -> None:
    inbox: Inbox[bytes] = Inbox(len, 10)
    for body in (b"x" * 4, b"x" * 4, b"x" * 4, b"x" * 30, b"x"):
        await inbox.put(body)
    stop = asyncio.Event()

    assert await inbox.next_batch(100, 10.0, stop) == [b"x" * 4] * 3
    assert await inbox.next_batch(100, 10.0, stop) == [b"x" * 30]
    assert await inbox.next_batch(100, 0.01, stop) == [b"x"]
