"""The api's one watcher of the store's receipts, against a real SQLite store in tmp_path: many waiting
requests share its queries, and a wait ends at its commit or at its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from api.stored import ReceiptWatcher
from contract.event import Event
from store.sqlite import SqliteReader, SqliteWriter


class CountingReader:
    """The real reader, counting the receipt queries the watcher makes."""

    def __init__(self, reader: SqliteReader) -> None:
        self.reader = reader
        self.queries = 0

    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        self.queries += 1
        return await self.reader.receipts(ids)


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
        waits = [asyncio.create_task(watcher.wait({f"r{i}": 1}, timeout=10)) for i in range(50)]
        await asyncio.sleep(0.2)  # every request is waiting; nothing committed yet
        queries_while_idle = counting.queries
        same = [[event("same")] for _ in range(50)]
        await writer.apply(same, [f"r{i}" for i in range(50)])
        results = await asyncio.gather(*waits)

        assert sorted((r.new, r.duplicates, r.pending) for r in results) == [(0, 1, 0)] * 49 + [(1, 0, 0)]
        # 0.2 s at 10 ms a tick is about 20 queries for all fifty waiters, not fifty per tick.
        assert queries_while_idle <= 30
        assert counting.queries <= queries_while_idle + 5
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
        assert 0.3 <= time.monotonic() - started < 1.5
        await asyncio.sleep(0.05)
        assert not watcher.watching()  # it stops once nobody waits
    finally:
        await watcher.close()
        await reader.close()
        await writer.close()
