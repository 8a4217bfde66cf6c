"""The api's one watcher of the store's receipts, against a real SQLite store in tmp_path: many waiting
requests share its queries, and a wait ends at its commit or at its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from api.commits import FeedListener
from api.stored import ReceiptWatcher
from contract import commits
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

    @property
    def live_since(self) -> float:
        return time.monotonic() - self._live_for

    def notice(self, *receipts: str) -> None:
        for listener in self.listeners:
            listener.on_notice(Notice(receipts, len(receipts)))

    def notice_figures(self, body: bytes) -> None:
        """A notice as a consumer sends it on the wire (contract/commits.py), figures and all."""
        notice = commits.decode(body)
        assert notice is not None
        for listener in self.listeners:
            listener.on_notice(notice)

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


class FailingReader:
    """A store whose every receipt read fails, counted: a request it answered was answered without one."""

    def __init__(self) -> None:
        self.calls = 0

    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        self.calls += 1
        raise OSError("the store must not be read")


async def test_a_notice_with_figures_answers_each_waiting_request_exactly_without_reading_the_store() -> None:
    reader = FailingReader()
    feed = Feed()
    watcher = ReceiptWatcher(reader, feed, interval=0.001)
    try:
        one = asyncio.create_task(watcher.wait({"one": 2}, timeout=30))
        two = asyncio.create_task(watcher.wait({"two-a": 1, "two-b": 3}, timeout=30))
        await settle_loop()
        feed.notice_figures(commits.encode(["one", "two-a"], 3, [("one", 2, 0), ("two-a", 0, 1)]))
        await settle_loop()
        assert one.done() and not two.done()  # two-b's commit has not been noticed yet
        feed.notice_figures(commits.encode(["two-b"], 1, [("two-b", 1, 2)]))
        first, second = await asyncio.wait_for(asyncio.gather(one, two), 10)

        assert (first.new, first.duplicates, first.pending) == (2, 0, 0)
        assert (second.new, second.duplicates, second.pending) == (1, 3, 0)
        assert reader.calls == 0
        assert dict(watcher.reads) == {}
        assert dict(watcher.found) == {"notice": 3}
    finally:
        await watcher.close()


async def test_figures_noticed_before_the_request_waited_answer_it_at_once_without_a_read() -> None:
    reader = FailingReader()
    feed = Feed()
    watcher = ReceiptWatcher(reader, feed)
    try:
        # The consumer committed and noticed before the broker's confirm reached the request.
        feed.notice_figures(commits.encode(["early"], 1, [("early", 1, 0)]))
        # A later notice naming it without figures (its message redelivered) leaves the figures known.
        feed.notice("early")

        result = await asyncio.wait_for(watcher.wait({"early": 1}, timeout=30), 10)

        assert (result.new, result.duplicates, result.pending) == (1, 0, 0)
        assert reader.calls == 0 and dict(watcher.found) == {"notice": 1}
        assert not watcher.watching()  # nothing to read: the watcher task never started
    finally:
        await watcher.close()


async def test_receipts_a_notice_names_without_figures_are_read_from_the_store_in_one_query(
    tmp_path: Path,
) -> None:
    """An older consumer's notices carry no figures, nor do a newer one's beyond FIGURES_PER_NOTICE."""
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    counting = CountingReader(SqliteReader(path))
    feed = Feed()
    watcher = ReceiptWatcher(counting, feed, interval=0.001)
    try:
        ids = [f"r{i}" for i in range(4)]
        waits = [asyncio.create_task(watcher.wait({r: 1}, timeout=30)) for r in ids]
        await settle_loop()
        result = await writer.apply([[event(f"e{i}")] for i in range(4)], ids)
        # Figures unlike the store's, so that each answer shows where it came from.
        figures = [(r, n + 1, d) for r, n, d in result.receipts]
        feed.notice_figures(b'{"receipts":["r0","r1"],"stored":2}')  # an older consumer's notice
        feed.notice_figures(commits.encode(["r2", "r3"], 2, figures[2:3]))  # r3 past the cap, say
        found = await asyncio.wait_for(asyncio.gather(*waits), 10)

        assert [(r.new, r.duplicates, r.pending) for r in found] == [(1, 0, 0)] * 2 + [(2, 0, 0), (1, 0, 0)]
        assert sorted(r for asked in counting.asked for r in asked) == ["r0", "r1", "r3"]
        assert dict(watcher.found) == {"notice": 1, "store": 3}
    finally:
        await watcher.close()
        await counting.reader.close()
        await writer.close()


async def test_a_lost_notice_with_figures_still_costs_one_read_at_the_deadline_never_a_hang() -> None:
    """Notices with figures change nothing for a request whose notice is lost: the deadline's read."""
    reader = FailingReader()
    feed = Feed()
    watcher = ReceiptWatcher(reader, feed)
    try:
        started = time.monotonic()
        lost = await asyncio.wait_for(watcher.wait({"lost": 2}, timeout=0.3), 10)

        assert (lost.new, lost.duplicates, lost.pending) == (0, 0, 2)  # 202: pending, never an early 200
        assert time.monotonic() - started >= 0.25
        assert reader.calls == 1 and dict(watcher.reads) == {"deadline": 1}
    finally:
        await watcher.close()


async def test_a_request_started_after_the_notices_came_up_never_reads_the_store_even_in_the_replay_window(
    tmp_path: Path,
) -> None:
    """Its receipts are new: nothing commits them before it starts. With the notices up since before then, a
    notice names every commit of them, however young the subscription (here 1 s, in a 300 s window)."""
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    feed = Feed(live_for=1.0)
    watcher = ReceiptWatcher(reader, feed, replay_window=300)
    try:
        started = time.monotonic()
        waiting = asyncio.create_task(watcher.wait({"after": 1}, timeout=30, started=started))
        await settle_loop()
        assert dict(watcher.reads) == {}
        await writer.apply([[event("after")]], ["after"])
        feed.notice_figures(commits.encode(["after"], 1, [("after", 1, 0)]))

        result = await asyncio.wait_for(waiting, 10)

        assert (result.new, result.duplicates, result.pending) == (1, 0, 0)
        assert dict(watcher.reads) == {}
        assert dict(watcher.found) == {"notice": 1}

        # One started before the notices came up: its commit may have come before them; read once.
        before = time.monotonic() - 5.0
        await writer.apply([[event("before")]], ["before"])
        result = await asyncio.wait_for(watcher.wait({"before": 1}, timeout=30, started=before), 10)
        assert (result.new, result.duplicates, result.pending) == (1, 0, 0)
        assert dict(watcher.reads) == {"recheck": 1}
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()
