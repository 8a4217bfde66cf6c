"""Inbox.next_batch: group commit (what arrived while the previous commit ran, up to a size), the optional
linger (a wait, closing sooner after a lull), and stop ending a wait."""

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

    first = await inbox.next_batch(3, stop, linger=10.0)
    second = await inbox.next_batch(3, stop, linger=0.01)

    assert first == items[:3]
    assert second == items[3:]


async def test_a_full_batch_returns_without_waiting_for_the_wait() -> None:
    inbox, items = await filled(4)

    started = time.monotonic()
    batch = await inbox.next_batch(4, asyncio.Event(), linger=10.0)

    assert batch == items
    assert time.monotonic() - started < 1.0


async def test_a_partial_batch_closes_after_a_lull_of_a_quarter_of_the_wait() -> None:
    inbox, items = await filled(2)

    started = time.monotonic()
    batch = await inbox.next_batch(100, asyncio.Event(), linger=0.2)
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
    batch = await inbox.next_batch(1000, asyncio.Event(), linger=0.2)
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
    batch = await inbox.next_batch(3, asyncio.Event(), linger=5.0)
    await feeder

    assert batch == items + late


async def test_a_delivery_after_the_wait_is_left_for_the_next_batch() -> None:
    inbox, items = await filled(1)
    stop = asyncio.Event()

    batch = await inbox.next_batch(10, stop, linger=0.02)
    later = delivery(99)
    await inbox.put(later)

    assert batch == items
    assert inbox.drain() == [later]


async def test_the_first_delivery_is_awaited_however_long_it_takes() -> None:
    inbox = Inbox()
    item = delivery(1)
    task = asyncio.create_task(inbox.next_batch(10, asyncio.Event(), linger=0.01))
    await asyncio.sleep(0.05)
    assert not task.done()

    await inbox.put(item)

    assert await asyncio.wait_for(task, 1.0) == [item]


async def test_stop_already_set_on_an_empty_inbox_returns_an_empty_batch() -> None:
    stop = asyncio.Event()
    stop.set()

    assert await Inbox().next_batch(10, stop, linger=10.0) == []


async def test_stop_set_while_waiting_on_an_empty_inbox_returns_an_empty_batch() -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.next_batch(10, stop, linger=10.0))
    await parked(task)

    stop.set()

    assert await asyncio.wait_for(task, 1.0) == []
    assert inbox.drain() == []


async def test_stop_with_deliveries_in_hand_still_returns_them_as_a_final_batch() -> None:
    inbox, items = await filled(3)
    stop = asyncio.Event()
    stop.set()

    assert await inbox.next_batch(10, stop, linger=10.0) == items


async def test_stop_ends_the_wait_for_more_once_the_first_delivery_arrived() -> None:
    inbox, items = await filled(1)
    stop = asyncio.Event()
    stop.set()

    started = time.monotonic()
    batch = await inbox.next_batch(10, stop, linger=10.0)

    assert batch == items
    assert time.monotonic() - started < 1.0


async def test_a_delivery_that_races_the_stop_is_kept() -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    item = delivery(1)
    task = asyncio.create_task(inbox.next_batch(10, stop, linger=10.0))
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
    task = asyncio.create_task(inbox.next_batch(10, stop, linger=10.0))
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

    assert await inbox.next_batch(100, stop, linger=10.0) == [b"x" * 4] * 3
    assert await inbox.next_batch(100, stop, linger=10.0) == [b"x" * 30]
    assert await inbox.next_batch(100, stop, linger=0.01) == [b"x"]


class Commit:
    """A commit in flight, as the pipeline reports it: busy until it ends, then it wakes the inbox."""

    def __init__(self, inbox: Inbox[AbstractIncomingMessage]) -> None:
        self.inbox = inbox
        self.running = True

    def busy(self) -> bool:
        return self.running

    def end(self) -> None:
        self.running = False
        self.inbox.wake()


async def test_a_lone_delivery_closes_its_batch_at_once_when_nothing_commits() -> None:
    inbox = Inbox()
    item = delivery(1)
    task = asyncio.create_task(inbox.next_batch(100, asyncio.Event()))
    await parked(task)

    await inbox.put(item)

    # No timer anywhere: the batch is returned within a few steps of the loop.
    for _ in range(5):
        await asyncio.sleep(0)
    assert task.done()
    assert task.result() == [item]


async def test_while_a_commit_runs_the_batch_takes_everything_that_arrives_until_it_ends() -> None:
    inbox: Inbox[AbstractIncomingMessage] = Inbox()
    commit = Commit(inbox)
    first = delivery(0)
    await inbox.put(first)
    task = asyncio.create_task(inbox.next_batch(100, asyncio.Event(), commit.busy))
    await parked(task)
    late = [delivery(n) for n in range(1, 6)]
    for item in late:
        await inbox.put(item)
        await parked(task)  # still open: the commit runs

    commit.end()

    assert await asyncio.wait_for(task, 1.0) == [first, *late]
    assert inbox.drain() == []


async def test_while_a_commit_runs_a_full_batch_closes_without_waiting_for_it() -> None:
    inbox, items = await filled(5)
    commit = Commit(inbox)

    batch = await asyncio.wait_for(inbox.next_batch(3, asyncio.Event(), commit.busy), 1.0)

    assert batch == items[:3]
    assert commit.busy()
    assert inbox.drain() == items[3:]


async def test_stop_closes_a_batch_waiting_on_a_commit() -> None:
    inbox, items = await filled(1)
    commit = Commit(inbox)
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.next_batch(10, stop, commit.busy))
    await parked(task)

    stop.set()
    inbox.wake()

    assert await asyncio.wait_for(task, 1.0) == items


async def test_prepare_turns_each_chunk_taken_into_what_the_batch_holds() -> None:
    inbox: Inbox[int] = Inbox()
    commit = Commit(inbox)  # type: ignore[arg-type]
    chunks: list[list[int]] = []

    def prepare(chunk: list[int]) -> list[str]:
        chunks.append(chunk)
        return [f"decoded {n}" for n in chunk]

    for n in (1, 2):
        await inbox.put(n)
    task = asyncio.create_task(inbox.next_batch(10, asyncio.Event(), commit.busy, prepare))
    for _ in range(5):
        await asyncio.sleep(0)
    await inbox.put(3)
    for _ in range(5):
        await asyncio.sleep(0)
    commit.end()

    assert await asyncio.wait_for(task, 1.0) == ["decoded 1", "decoded 2", "decoded 3"]
    # Decoded as they were taken, while the commit ran, not all at its end.
    assert chunks == [[1, 2], [3]]
