"""GET /events' filters in the store, on both backends: source, a received_at window, newest first, with
topic and keyset paging; on SQLite each query is served by an index (EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from contract.event import Event
from store import Filters, Page, Reader, Writer
from store.sqlite.keys import NEWEST_SEQ, SEQ_ENDS, SEQ_PROBE
from store.sqlite.reader import page_query
from tests.harness.stores import StoreSettings


def event(event_id: str, topic: str, source: str) -> Event:
    return Event(topic=topic, event_id=event_id, timestamp="2026-11-22T10:15:00Z", source=source)


def ids(page: Page) -> list[str]:
    return [row[2] for row in page.rows]


async def everything(
    reader: Reader, topic: str | None, filters: Filters, descending: bool = False
) -> list[str]:
    """All pages of 2, following the keyset cursor."""
    out: list[str] = []
    after: int | None = NEWEST_SEQ if descending else 0
    while after is not None:
        page = await reader.page(topic, 2, after, descending, filters)
        out += ids(page)
        after = page.next_after
    return out


async def stored_batches(writer: Writer, reader: Reader) -> list[str]:
    """Three batches, each its own received_at; returns those received_at values in order."""
    batches = [
        [event("a1", "orders", "web"), event("a2", "auth", "api"), event("a3", "orders", "api")],
        [event("b1", "orders", "api"), event("b2", "auth", "web")],
        [event("c1", "orders", "web"), event("c2", "orders", "api"), event("c3", "auth", "api")],
    ]
    for batch in batches:
        await writer.apply([batch])
    rows = (await reader.page(None, 100, 0)).rows
    times = sorted({row[6] for row in rows})
    assert len(times) == 3 and [row[2] for row in rows] == [e.event_id for b in batches for e in b]
    return times


async def test_source_and_a_received_at_window_narrow_pages_alone_and_combined(
    writer: Writer, reader: Reader
) -> None:
    first, second, third = await stored_batches(writer, reader)

    assert await everything(reader, None, Filters(source="api")) == ["a2", "a3", "b1", "c2", "c3"]
    assert await everything(reader, "orders", Filters(source="api")) == ["a3", "b1", "c2"]
    assert await everything(reader, None, Filters(since=second)) == ["b1", "b2", "c1", "c2", "c3"]
    assert await everything(reader, None, Filters(until=second)) == ["a1", "a2", "a3"]
    assert await everything(reader, None, Filters(since=second, until=third)) == ["b1", "b2"]
    assert await everything(reader, "auth", Filters(source="api", since=first, until=third)) == ["a2"]
    assert await everything(reader, None, Filters(since=third, until=second)) == []
    assert await everything(reader, None, Filters(since="9999-01-01T00:00:00.000000Z")) == []
    assert await everything(reader, None, Filters(source="nobody")) == []


async def test_newest_first_with_filters_pages_backwards(writer: Writer, reader: Reader) -> None:
    _, second, _ = await stored_batches(writer, reader)

    assert await everything(reader, None, Filters(), descending=True) == [
        "c3", "c2", "c1", "b2", "b1", "a3", "a2", "a1",
    ]  # fmt: skip
    assert await everything(reader, "orders", Filters(source="api", since=second), descending=True) == [
        "c2",
        "b1",
    ]


def plan(conn: sqlite3.Connection, sql: str, params: list[object]) -> list[str]:
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


async def test_every_filter_is_served_by_an_index_on_sqlite(tmp_path: Path) -> None:
    from store import open_writer

    settings = StoreSettings(tmp_path / "events.db")
    writer = await open_writer(settings)
    await writer.apply([[event(f"e{n}", f"t{n % 3}", f"s{n % 2}") for n in range(50)]])
    await writer.close()
    conn = sqlite3.connect(settings.db_path)
    try:
        check_plans(conn, expect_index=True)  # as the product runs: it never collects statistics
        conn.execute("ANALYZE")  # with them SQLite may prefer the primary key, still without a sort
        check_plans(conn, expect_index=False)
    finally:
        conn.close()


def check_plans(conn: sqlite3.Connection, expect_index: bool) -> None:
    cases = [
        (topic, Filters(source=source, since=since, until=until), descending)
        for topic in (None, "t1")
        for source in (None, "s1")
        for since in (None, "2026-01-01T00:00:00.000000Z")
        for until in (None, "2027-01-01T00:00:00.000000Z")
        for descending in (False, True)
    ]
    for topic, filters, descending in cases:
        sql, params = page_query(topic, 100, 0, descending, filters, (0, NEWEST_SEQ))
        steps = plan(conn, sql, params)
        where = f"topic={topic} {filters} descending={descending}: {steps}"
        assert all(step.startswith("SEARCH events USING") for step in steps), where
        assert not any("TEMP B-TREE" in step for step in steps), where
        expected = "events_by_topic" if topic else "events_by_source" if filters.source else "PRIMARY KEY"
        assert expected in steps[0] or not expect_index, where
    assert plan(conn, SEQ_PROBE, [1]) == ["SEARCH events USING INTEGER PRIMARY KEY (rowid>?)"]
    assert [step for step in plan(conn, SEQ_ENDS, []) if "events" in step] == ["SEARCH events"] * 2


async def test_a_lookup_by_key_seeks_each_bucket_and_never_scans_the_keys_on_sqlite(tmp_path: Path) -> None:
    """GET /events/{topic}/{event_id}: every statement the reader runs for it, with its query plan."""
    from store import open_reader, open_writer
    from store.sqlite.reader import _event_row

    settings = StoreSettings(tmp_path / "events.db")
    writer = await open_writer(settings)
    await writer.apply([[event(f"e{n}", f"t{n % 3}", f"s{n % 2}") for n in range(50)]])
    await writer.close()
    reader = open_reader(settings)
    assert await reader.event_row("t1", "e1") is not None
    await reader.close()
    conn = sqlite3.connect(settings.db_path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        assert _event_row(conn, "t1", "e1") is not None
        assert _event_row(conn, "t1", "nope") is None
        conn.set_trace_callback(None)
        plans = [step for sql in dict.fromkeys(statements) for step in explained(conn, sql)]
    finally:
        conn.close()
    assert any("keys USING PRIMARY KEY" in step for step in plans), plans
    assert not [step for step in plans if step.startswith("SCAN") and "key_buckets" not in step], plans


def explained(conn: sqlite3.Connection, sql: str) -> list[str]:
    """The plan of a traced statement (its parameters inlined by the trace)."""
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
