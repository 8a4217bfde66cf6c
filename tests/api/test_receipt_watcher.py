"""The api's one watcher of the store's receipts, against a real SQLite store in tmp_path: many waiting
requests share its queries, and a wait ends at its commit or at its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from api.commits import FeedListener
from api.stored import ReceiptWatcher
from contract.commits import Notice
from contract.event import Event
from store.sqlite import SqliteReader, SqliteWriter
from tests.harness.waiting import eventually


class CountingReader:
    """The real reader, recording the ids of every receipt query the watcher makes and what it found."""

    def __init__(self, reader: SqliteReader) -> None:
        self.reader = reader
        self.asked: list[list[str]] = []
        self.found: list[int] = []

    @property
    def queries(self) -> int:
        return len(self.asked)

    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        self.asked.append(list(ids))
        found = await self.reader.receipts(ids)
        self.found.append(len(found))
        return found


def event(event_id: str) -> Event:
    return Event(topic="watch", event_id=event_id, timestamp="2026-11-22T10:15:00Z", source="test")


async def test_fifty_waiting_requests_share_one_query_per_tick_and_each_gets_its_own_figures(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    counting = CountingReader(reader)
    watcher = ReceiptWatcher(counting, interval=0.01)
    try:
        every = sorted(f"r{i}" for i in range(50))
        waits = [asyncio.create_task(watcher.wait({f"r{i}": 1}, timeout=60)) for i in range(50)]
        # Ten ticks with all fifty waiting and nothing committed yet.
        await eventually(lambda: counting.queries >= 10, 30, 0.005, message="ten ticks of the watcher")
        idle = counting.queries
        same = [[event("same")] for _ in range(50)]
        await writer.apply(same, [f"r{i}" for i in range(50)])
        applied = counting.queries
        results = await asyncio.gather(*waits)
        await eventually(lambda: not watcher.watching(), 30, 0.005, message="the watcher stopped")

        assert sorted((r.new, r.duplicates, r.pending) for r in results) == [(0, 1, 0)] * 49 + [(1, 0, 0)]
        # Each tick was one query for all fifty waiters' receipts, never one per waiter.
        assert counting.asked[:idle] == [every] * idle
        assert counting.found[:idle] == [0] * idle
        # The query that found them asked for all fifty, and it was the last: with nobody left waiting,
        # the watcher asked no more (at most one query started after the commit returned).
        assert counting.asked[-1] == every and counting.found[-1] == 50
        assert counting.found.count(50) == 1 and counting.queries - applied <= 1
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()


async def test_a_wait_ends_at_its_deadline_with_the_missing_events_pending(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    watcher = ReceiptWatcher(reader, interval=0.01)
    try:
        await writer.apply([[event("a"), event("b")]], ["here"])
        started = time.monotonic()

        result = await watcher.wait({"here": 2, "never": 3}, timeout=0.3)

        assert (result.new, result.duplicates, result.pending) == (2, 0, 3)
        assert 0.3 <= time.monotonic() - started < 5
        # It stops once nobody waits.
        await eventually(lambda: not watcher.watching(), 30, 0.005, message="the watcher stopped")
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()


class Feed:
    """A commit feed the test drives by hand: live or not, and notices when the test says so."""

    def __init__(self, live: bool = True, live_for: float = 3600.0) -> None:
        self.live = live
        self._live_for = live_for
        self.listeners: list[FeedListener] = []

    def listen(self, listener: FeedListener) -> None:
        self.listeners.append(listener)

    def live_for(self) -> float:
        return self._live_for if self.live else 0.0

    def notice(self, *receipts: str) -> None:
        for listener in self.listeners:
            listener.on_notice(Notice(receipts, len(receipts)))

    def set_live(self, live: bool) -> None:
        self.live = live
        for listener in self.listeners:
            listener.on_live(live)


async def settle_loop() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_with_notices_live_the_store_is_read_only_when_a_notice_names_an_awaited_receipt(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    counting = CountingReader(reader)
    feed = Feed()
    watcher = ReceiptWatcher(counting, feed, interval=0.001)
    try:
        waits = [asyncio.create_task(watcher.wait({f"r{i}": 1}, timeout=30)) for i in range(10)]
        await asyncio.sleep(0.1)  # a hundred poll intervals: no read without a notice
        assert counting.queries == 0
        await writer.apply([[event(f"e{i}")] for i in range(10)], [f"r{i}" for i in range(10)])
        feed.notice("someone-else")
        await settle_loop()
        assert counting.queries == 0  # not awaited here: nothing read

        feed.notice(*(f"r{i}" for i in range(10)))
        results = await asyncio.wait_for(asyncio.gather(*waits), 10)

        assert [(r.new, r.duplicates, r.pending) for r in results] == [(1, 0, 0)] * 10
        assert counting.queries == 1  # one read for all ten
        assert dict(watcher.reads) == {"notice": 1}
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()


async def test_a_notice_that_came_before_its_request_waited_is_not_missed(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    feed = Feed()
    watcher = ReceiptWatcher(reader, feed)
    try:
        # The consumer committed and noticed before the broker's confirm reached the request.
        await writer.apply([[event("early")]], ["early"])
        feed.notice("early")

        result = await asyncio.wait_for(watcher.wait({"early": 1}, timeout=30), 10)

        assert (result.new, result.duplicates, result.pending) == (1, 0, 0)
        assert dict(watcher.reads) == {"notice": 1}
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()


async def test_notices_down_poll_the_store_and_back_up_read_each_waiter_once_more(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    feed = Feed()
    watcher = ReceiptWatcher(reader, feed, interval=0.01)
    try:
        down = asyncio.create_task(watcher.wait({"down": 1}, timeout=30))
        gap = asyncio.create_task(watcher.wait({"gap": 1}, timeout=30))
        await settle_loop()
        feed.set_live(False)
        await asyncio.sleep(0.1)
        assert watcher.reads["polled"] >= 3
        assert not down.done()

        await writer.apply([[event("d")]], ["down"])  # committed while down: found by polling
        assert (await asyncio.wait_for(down, 10)).new == 1

        # Committed in the gap between the last poll and the new subscription: no notice ever comes.
        feed.live = True
        await writer.apply([[event("g")]], ["gap"])
        feed.set_live(True)
        result = await asyncio.wait_for(gap, 10)

        assert (result.new, result.pending) == (1, 0)
        assert watcher.reads["recheck"] >= 1
        assert watcher.reads["notice"] == 0
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()


async def test_a_lost_notice_costs_one_read_at_the_deadline_never_an_early_or_missing_answer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    feed = Feed()
    watcher = ReceiptWatcher(reader, feed)
    try:
        lost = asyncio.create_task(watcher.wait({"lost": 2}, timeout=0.5))
        never = asyncio.create_task(watcher.wait({"never": 1}, timeout=0.5))
        await settle_loop()
        await writer.apply([[event("l1"), event("l2")]], ["lost"])  # its notice never arrives

        found, missing = await asyncio.wait_for(asyncio.gather(lost, never), 10)

        assert (found.new, found.duplicates, found.pending) == (2, 0, 0)
        assert (missing.new, missing.duplicates, missing.pending) == (0, 0, 1)
        assert dict(watcher.reads) == {"deadline": 2}
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()
