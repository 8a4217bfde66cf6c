"""Retention on both backends: expired events are never read, their keys stay, sweeps remove them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from contract.event import Event
from store import Expired, Filters, Reader, Retention, Writer
from store.base import Row
from store.retention import KEEP_ALL
from tests.harness.waiting import eventually

SHORT = timedelta(seconds=5)


def event(event_id: str, topic: str = "orders", source: str = "test", **payload: Any) -> Event:
    return Event(
        topic=topic, event_id=event_id, timestamp="2026-11-22T10:15:00Z", source=source, payload=payload
    )


def ids(rows: list[Row]) -> list[tuple[str, str]]:
    return [(row[1], row[2]) for row in rows]


async def all_pages(
    reader: Reader, topic: str | None = None, descending: bool = False, **kw: Any
) -> list[Row]:
    found: list[Row] = []
    after = 2**63 - 1 if descending else 0
    while True:
        page = await reader.page(topic, 3, after, descending, Filters(**kw))
        found += page.rows
        if page.next_after is None:
            return found
        after = page.next_after


async def expire(reader: Reader, topic: str, event_id: str) -> Expired:
    """Wait (bounded) until the event's retention has run out."""

    async def gone() -> Expired | None:
        row = await reader.event_row(topic, event_id)
        return row if isinstance(row, Expired) else None

    found: Expired = await eventually(gone, timeout=15, message=f"{topic}/{event_id} expired")
    return found


async def test_the_store_records_the_retention_and_returns_the_previous_one(writer: Writer) -> None:
    assert await writer.record_retention(Retention(SHORT)) == KEEP_ALL
    assert await writer.record_retention(Retention(SHORT, SHORT * 2)) == Retention(SHORT)
    assert await writer.record_retention(KEEP_ALL) == Retention(SHORT, SHORT * 2)


async def test_expired_events_are_never_read_with_any_filter_before_and_after_the_sweep(
    writer: Writer, reader: Reader
) -> None:
    await writer.record_retention(Retention(SHORT))
    old = [event(f"old-{i}", topic="orders" if i % 2 else "auth", source=f"s{i % 3}") for i in range(7)]
    await writer.apply([old[:4], old[4:]])
    await expire(reader, "orders", "old-1")
    new = [event(f"new-{i}", topic="orders" if i % 2 else "auth", source=f"s{i % 3}") for i in range(5)]
    await writer.apply([new])

    for swept in (False, True):
        expected = [(e.topic, e.event_id) for e in new]
        assert ids(await all_pages(reader)) == expected
        assert ids(await all_pages(reader, descending=True)) == expected[::-1]
        assert ids(await all_pages(reader, "orders")) == [k for k in expected if k[0] == "orders"]
        assert ids(await all_pages(reader, source="s1")) == [
            (e.topic, e.event_id) for e in new if e.source == "s1"
        ]
        assert ids(await all_pages(reader, "auth", True, source="s0")) == [
            (e.topic, e.event_id) for e in reversed(new) if e.topic == "auth" and e.source == "s0"
        ]
        assert ids(await all_pages(reader, since="2000-01-01T00:00:00.000000Z")) == expected
        for e in old:
            assert isinstance(await reader.event_row(e.topic, e.event_id), Expired)
        for e in new:
            row = await reader.event_row(e.topic, e.event_id)
            assert not isinstance(row, Expired) and row is not None and row[2] == e.event_id
        if not swept:
            done = await writer.sweep()
            assert (done.events, done.keys) == (7, 0)


async def test_an_expired_key_tells_when_it_was_received_and_when_it_expired(
    writer: Writer, reader: Reader
) -> None:
    await writer.record_retention(Retention(SHORT))
    await writer.apply([[event("a")]])
    row = await reader.event_row("orders", "a")
    assert row is not None and not isinstance(row, Expired)
    received = datetime.fromisoformat(row[6])

    expired = await expire(reader, "orders", "a")

    assert abs(datetime.fromisoformat(expired.received_at) - received) < timedelta(milliseconds=1)
    assert datetime.fromisoformat(expired.expired_at) - datetime.fromisoformat(expired.received_at) == SHORT
    await writer.sweep()
    assert await reader.event_row("orders", "a") == expired
    assert await reader.event_row("orders", "never-sent") is None


async def test_a_resend_of_an_expired_event_is_a_duplicate_never_a_conflict_and_is_not_stored_again(
    writer: Writer, reader: Reader
) -> None:
    await writer.record_retention(Retention(SHORT))
    await writer.apply([[event("a", n=1), event("b", n=1)]], ["first"])
    await expire(reader, "orders", "b")

    before_sweep = await writer.apply([[event("a", n=1), event("a", n=2)]], ["again"])
    await writer.sweep()
    after_sweep = await writer.apply([[event("b", n=2)]], ["later"])

    assert (before_sweep.received, before_sweep.unique_processed, before_sweep.duplicate_dropped) == (2, 0, 2)
    assert (after_sweep.received, after_sweep.unique_processed, after_sweep.duplicate_dropped) == (1, 0, 1)
    assert before_sweep.conflicts == after_sweep.conflicts == 0
    assert await reader.receipts(["again", "later"]) == {"again": (0, 2), "later": (0, 1)}
    assert await all_pages(reader) == []
    snapshot = await reader.snapshot()
    assert snapshot.counters == {
        "received": 5,
        "unique_processed": 2,
        "duplicate_dropped": 3,
        "invalid": 0,
        "conflicts": 0,
    }


async def test_a_live_duplicate_with_another_payload_is_still_a_conflict(writer: Writer) -> None:
    await writer.record_retention(Retention(timedelta(hours=1)))
    await writer.apply([[event("a", n=1)]])

    result = await writer.apply([[event("a", n=2)]])

    assert (result.duplicate_dropped, result.conflicts) == (1, 1)


async def test_after_key_retention_a_resend_is_stored_again(writer: Writer, reader: Reader) -> None:
    await writer.record_retention(Retention(SHORT, SHORT))
    await writer.apply([[event("a", n=1)]])

    async def forgotten() -> bool:
        return await reader.event_row("orders", "a") is None

    await eventually(forgotten, timeout=15, message="key forgotten")
    result = await writer.apply([[event("a", n=2)]])

    assert (result.unique_processed, result.duplicate_dropped) == (1, 0)
    row = await reader.event_row("orders", "a")
    assert row is not None and not isinstance(row, Expired) and row[5] == '{"n":2}'
    assert ids(await all_pages(reader)) == [("orders", "a")]
    done = await writer.sweep()
    assert done.events == 1  # the first copy's row
    assert ids(await all_pages(reader)) == [("orders", "a")]
    again = await writer.apply([[event("a", n=2)]])
    assert (again.unique_processed, again.duplicate_dropped) == (0, 1)


async def test_holdings_count_stored_and_expired_events_exactly_before_and_after_the_sweep(
    writer: Writer, reader: Reader
) -> None:
    await writer.record_retention(Retention(SHORT))
    await writer.apply([[event(f"old-{i}") for i in range(10)]])
    await expire(reader, "orders", "old-0")
    await writer.apply([[event(f"new-{i}") for i in range(4)]])
    newest = await reader.event_row("orders", "new-0")
    assert newest is not None and not isinstance(newest, Expired)

    for _ in range(2):
        snapshot = await reader.snapshot()
        holdings = snapshot.holdings
        assert holdings is not None
        assert (holdings.stored_events, holdings.expired_events) == (4, 10)
        assert holdings.oldest_received_at == newest[6]
        assert holdings.retention == Retention(SHORT)
        assert holdings.size_bytes is not None and holdings.size_bytes > 0
        assert snapshot.counters["unique_processed"] == 14
        await writer.sweep()


async def test_a_sweep_removes_a_large_expiry_in_many_short_transactions(
    writer: Writer, reader: Reader
) -> None:
    await writer.record_retention(Retention(SHORT))
    for start in range(0, 6000, 1000):
        await writer.apply([[event(f"e-{i}") for i in range(start, start + 1000)]])
    await expire(reader, "orders", "e-5999")

    done = await writer.sweep()

    assert done.events == 6000
    assert done.transactions >= 2
    # About 20 ms each aimed at; generous here, where other suites share the machine.
    assert done.longest < 0.5
    assert (await writer.sweep()).events == 0
    holdings = (await reader.snapshot()).holdings
    assert holdings is not None and (holdings.stored_events, holdings.expired_events) == (0, 6000)


async def test_without_retention_a_sweep_removes_nothing(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a")]])

    done = await writer.sweep()

    assert (done.events, done.keys) == (0, 0)
    assert done.skipped is not None
    assert ids(await all_pages(reader)) == [("orders", "a")]
    holdings = (await reader.snapshot()).holdings
    assert holdings is not None and (holdings.stored_events, holdings.expired_events) == (1, 0)


async def test_a_store_without_a_recorded_retention_keeps_everything(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a")]])
    moment = datetime.now(UTC) - timedelta(days=3650)

    assert Retention().event_cutoff(moment) is None
    assert ids(await all_pages(reader)) == [("orders", "a")]
