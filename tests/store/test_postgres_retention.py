"""Retention on PostgreSQL alone: whole partitions leave, one sweeper at a time, sweeps never hold batches
up, a killed sweep is finished by the next, and a store of schema 6 migrates with its data exact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from store import Expired, Retention, StoreError, open_reader, utc_now
from store.postgres import SCHEMA_VERSION, PostgresWriter
from store.postgres.retention import SWEEP_LOCK
from store.postgres.schema import MIGRATIONS, SWEEPER_APPLICATION
from tests.harness.postgres import fresh_schema
from tests.harness.stores import PostgresPeek, StoreSettings, counters
from tests.harness.waiting import eventually
from tests.store.test_retention import all_pages, event, expire, ids

# Long enough that an event stored just before a sweep has not expired by the time it runs, even on a
# loaded machine.
SHORT = timedelta(seconds=5)
# Every partition of `events`.
_PARTITIONS = """
    SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass ORDER BY 1
"""


@pytest.fixture
def settings(postgres_database: str, tmp_path: Path) -> StoreSettings:
    return StoreSettings(tmp_path / "events.db", fresh_schema(postgres_database))


@pytest.fixture
def url(settings: StoreSettings) -> str:
    assert settings.database_url is not None
    return settings.database_url


@pytest.fixture
async def writers(url: str) -> AsyncIterator[list[PostgresWriter]]:
    opened = [await PostgresWriter.open(url) for _ in range(2)]
    try:
        yield opened
    finally:
        for writer in opened:
            await writer.close()


async def partition_of(peek: PostgresPeek, event_id: str) -> str:
    rows = await peek.rows("SELECT tableoid::regclass::text FROM events WHERE event_id = $1", event_id)
    assert len(rows) == 1
    return str(rows[0][0])


async def test_a_sweep_drops_the_partitions_of_expired_events_and_deletes_no_row(
    writers: list[PostgresWriter], url: str
) -> None:
    writer, peek, reader = writers[0], PostgresPeek(url), open_reader(StoreSettings(Path("-"), url))
    try:
        await writer.record_retention(Retention(SHORT))
        await writer.apply([[event(f"old-{i}") for i in range(50)]])
        old = {await partition_of(peek, f"old-{i}") for i in range(50)}
        await expire(reader, "orders", "old-49")
        await writer.apply([[event("new")]])
        new = await partition_of(peek, "new")
        deleted_before = await _deleted_tuples(peek)

        done = await writer.sweep()

        assert (done.events, done.keys) == (50, 0)
        left = {str(r[0]) for r in await peek.rows(_PARTITIONS)}
        assert not old & left and new in left
        assert [r[0] for r in await peek.rows("SELECT to_regclass($1)::text", sorted(old)[0])] == [None]
        assert await _deleted_tuples(peek) == deleted_before  # no row deleted: the tables went whole
        assert ids(await all_pages(reader)) == [("orders", "new")]
        assert isinstance(await reader.event_row("orders", "old-0"), Expired)
        holdings = (await reader.snapshot()).holdings
        assert holdings is not None and (holdings.stored_events, holdings.expired_events) == (1, 50)
    finally:
        await reader.close()


async def _deleted_tuples(peek: PostgresPeek) -> int:
    """Rows ever deleted from the partitions still there, as the statistics collector counts them."""
    await peek.rows("SELECT pg_stat_force_next_flush()")
    rows = await peek.rows(
        "SELECT COALESCE(SUM(n_tup_del), 0)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'events%'"
    )
    return int(rows[0][0])


async def test_only_one_consumer_sweeps_at_a_time(writers: list[PostgresWriter], url: str) -> None:
    first, second = writers
    await first.record_retention(Retention(SHORT))
    await first.apply([[event(f"e-{i}") for i in range(20)]])
    reader = open_reader(StoreSettings(Path("-"), url))
    holder = await asyncpg.connect(url)
    try:
        await expire(reader, "orders", "e-19")
        await holder.execute("SELECT pg_advisory_lock($1)", SWEEP_LOCK)  # as a sweeping consumer holds it
        busy = await asyncio.gather(first.sweep(), second.sweep())
        assert [(r.events, r.skipped) for r in busy] == [(0, "another consumer is sweeping")] * 2
        await holder.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)

        both = await asyncio.gather(first.sweep(), second.sweep())

        # One swept all 20; the other either waited its turn and found nothing, or was turned away.
        assert sorted(r.events for r in both) == [0, 20]
        assert (await first.sweep()).events == 0
        holdings = (await reader.snapshot()).holdings
        assert holdings is not None and (holdings.stored_events, holdings.expired_events) == (0, 20)
    finally:
        await holder.close()
        await reader.close()


async def open_batch(url: str, event_id: str) -> tuple[Any, Any]:
    """A consumer's batch that has inserted its event and not committed yet."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "eventagg-consumer"})
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute(
        "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
        " VALUES (nextval('events_seq'), 'orders', $1, '2026-11-22T10:15:00Z', 'test', '{}', $2)",
        event_id,
        utc_now(),
    )
    return conn, transaction


async def test_a_sweep_waits_for_a_running_batch_and_never_holds_up_other_batches_or_reads(
    writers: list[PostgresWriter], url: str
) -> None:
    sweeper, other = writers
    await sweeper.record_retention(Retention(SHORT))
    await sweeper.apply([[event(f"old-{i}") for i in range(10)]])
    reader = open_reader(StoreSettings(Path("-"), url))
    await expire(reader, "orders", "old-9")
    await sweeper.apply([[event("fresh")]])  # (its writer's partitions cover the open batch's moment)
    conn, transaction = await open_batch(url, "running")
    try:
        sweep = asyncio.create_task(sweeper.sweep())
        await eventually(lambda: _detach_waiting(url), timeout=15, message="the sweep waits for the batch")

        # Meanwhile other batches commit and pages are read, each without waiting for the sweep.
        for i in range(5):
            started = time.perf_counter()
            result = await asyncio.wait_for(other.apply([[event(f"during-{i}")]]), 10)
            assert result.unique_processed == 1
            row = await reader.event_row("orders", f"during-{i}")
            assert row is not None and not isinstance(row, Expired) and row[2] == f"during-{i}"
            # (A page stops below the open batch, the watermark's rule; it is read, not held up.)
            assert "during-0" not in [row[2] for row in (await reader.page(None, 100, 0)).rows]
            assert time.perf_counter() - started < 5
        assert not sweep.done()

        await transaction.commit()
        done = await asyncio.wait_for(sweep, 30)
    finally:
        await conn.close()
        await reader.close()
    assert done.events == 10
    peek = PostgresPeek(url)
    assert sorted(r[0] for r in await peek.rows("SELECT event_id FROM events")) == sorted(
        ["fresh", "running"] + [f"during-{i}" for i in range(5)]
    )


async def _detach_waiting(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = $1"
                " AND query LIKE '%DETACH PARTITION%' AND wait_event_type = 'Lock')",
                SWEEPER_APPLICATION,
            )
        )
    finally:
        await conn.close()


async def test_a_sweep_killed_inside_its_detach_loses_nothing_unexpired_and_the_next_sweep_finishes(
    writers: list[PostgresWriter], url: str
) -> None:
    sweeper = writers[0]
    await sweeper.record_retention(Retention(SHORT))
    await sweeper.apply([[event(f"old-{i}") for i in range(10)]])
    reader = open_reader(StoreSettings(Path("-"), url))
    await expire(reader, "orders", "old-9")
    await sweeper.apply([[event(f"live-{i}") for i in range(5)]])
    conn, transaction = await open_batch(url, "running")
    killer = await asyncpg.connect(url)
    try:
        sweep = asyncio.create_task(sweeper.sweep())
        await eventually(lambda: _detach_waiting(url), timeout=15, message="the sweep waits for the batch")
        killed = await killer.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            SWEEPER_APPLICATION,
        )
        assert killed == 1
        with pytest.raises(StoreError):
            await asyncio.wait_for(sweep, 30)
        await transaction.commit()

        live = [("orders", f"live-{i}") for i in range(5)] + [("orders", "running")]
        assert sorted(ids(await all_pages(reader))) == sorted(live)
        holdings = (await reader.snapshot()).holdings
        assert holdings is not None and (holdings.stored_events, holdings.expired_events) == (5, 10)

        done = await sweeper.sweep()

        assert done.events == 10
        assert sorted(ids(await all_pages(reader))) == sorted(live)
        assert await killer.fetchval("SELECT count(*) FROM pg_inherits WHERE inhdetachpending") == 0
        assert await killer.fetchval("SELECT events FROM sweep_totals") == 10
    finally:
        await conn.close()
        await killer.close()
        await reader.close()


# --- migration of a store of schema 6 -----------------------------------------------------------------------


async def store_of_schema_6(url: str, events: int) -> None:
    """A store at schema 6 as its writer would have left it: events, striped counts, per-topic counts."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE eventagg_schema (version integer NOT NULL)")
            for version, script in enumerate(MIGRATIONS[:6], start=1):
                assert isinstance(script, str)
                await conn.execute(script)
                await conn.execute("INSERT INTO eventagg_schema (version) VALUES ($1)", version)
            await conn.execute(
                "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
                " SELECT i, CASE WHEN i % 3 = 0 THEN 'auth' ELSE 'orders' END, 'e-' || i,"
                " '2026-11-22T10:15:00Z', 's', '{\"n\":' || i || '}',"
                " to_char((timestamptz '2026-11-22 10:15:00Z' + i * interval '1 ms') AT TIME ZONE 'UTC',"
                ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
                " FROM generate_series(1, $1) AS i",
                events,
            )
            await conn.execute("SELECT setval('events_seq', $1)", events)
            auth = events // 3
            await conn.executemany(
                "UPDATE counter_slots SET value = $2 WHERE name = $1 AND slot = $3",
                [
                    ("received", events + 7, 0),
                    ("unique_processed", events - 1, 0),
                    ("unique_processed", 1, 5),
                    ("duplicate_dropped", 6, 2),
                    ("invalid", 1, 0),
                    ("conflicts", 2, 0),
                ],
            )
            await conn.execute("INSERT INTO topics (topic, first_seq) VALUES ('orders', 1), ('auth', 3)")
            await conn.execute(
                "INSERT INTO topic_counts (topic, slot, count, duplicates, conflicts)"
                " VALUES ('orders', 0, $1, 4, 2), ('auth', 0, $2, 2, 0)",
                events - auth,
                auth,
            )
    finally:
        await conn.close()


async def test_a_store_of_schema_6_with_data_migrates_with_every_event_key_and_counter_exact(
    url: str, settings: StoreSettings
) -> None:
    await store_of_schema_6(url, 3000)
    peek = PostgresPeek(url)
    before = await counters(peek)

    writer = await PostgresWriter.open(url)
    reader = open_reader(settings)
    try:
        assert (await peek.rows("SELECT max(version) FROM eventagg_schema"))[0][0] == SCHEMA_VERSION
        assert await counters(peek) == before
        snapshot = await reader.snapshot()
        assert snapshot.topic_counts == {"orders": 2000, "auth": 1000}
        assert snapshot.topic_duplicates == {"orders": 4, "auth": 2}
        assert await peek.rows("SELECT count(*), count(DISTINCT seq) FROM events") == [(3000, 3000)]
        assert await peek.rows("SELECT count(*) FROM event_keys") == [(3000,)]
        pages = await all_pages(reader)
        assert [row[0] for row in pages] == list(range(1, 3001))
        row = await reader.event_row("auth", "e-3")
        assert row is not None and not isinstance(row, Expired) and row[5] == '{"n":3}'
        assert snapshot.holdings is not None and snapshot.holdings.stored_events == 3000

        # The keys moved: a re-send is a duplicate (a conflict when its content differs), a new key is stored.
        await writer.record_retention(Retention())
        result = await writer.apply([[event("e-1", topic="orders"), event("new", topic="orders")]])
        assert (result.unique_processed, result.duplicate_dropped, result.conflicts) == (1, 1, 1)
        assert (await reader.event_row("orders", "new")) is not None
        assert await counters(peek) == {
            "received": before["received"] + 2,
            "unique_processed": before["unique_processed"] + 1,
            "duplicate_dropped": before["duplicate_dropped"] + 1,
            "invalid": before["invalid"],
            "conflicts": before["conflicts"] + 1,
        }
        assert [row[2] for row in await all_pages(reader)][-1] == "new"
        # Once a retention is set and the old events expire, the migrated table leaves whole.
        await writer.record_retention(Retention(timedelta(days=1)))
        assert (await writer.sweep()).events == 3000
        assert ids(await all_pages(reader)) == [("orders", "new")]
    finally:
        await writer.close()
        await reader.close()


# The open key bucket's table with its indexes, and how often it was vacuumed (by anyone).
_BUCKET_SIZE = "SELECT pg_total_relation_size(to_regclass('event_keys_b0'))"
_BUCKET_VACUUMS = """
    SELECT vacuum_count + autovacuum_count FROM pg_stat_all_tables WHERE relid = to_regclass('event_keys_b0')
"""


async def test_sweeps_vacuum_the_keys_key_retention_deleted_so_the_open_bucket_stops_growing(
    writers: list[PostgresWriter], url: str
) -> None:
    """KEY_RETENTION deletes keys from the open bucket row by row; only a VACUUM makes their space free. The
    sweeps do it themselves, whether or not the server's autovacuum is on: under a steady turnover of keys
    the table stays the size of the keys held, instead of growing by every key ever held."""
    writer, peek = writers[0], PostgresPeek(url)
    await writer.record_retention(Retention(keys=timedelta(seconds=1)))
    per_round, forgotten, sizes, tidied = 2_000, 0, [], set()
    for round_ in range(12):
        for start in range(0, per_round, 500):
            await writer.apply([[event(f"r{round_}-{i}") for i in range(start, start + 500)]])

        async def swept(target: int = per_round * (round_ + 1)) -> bool:
            nonlocal forgotten
            done = await writer.sweep()
            forgotten += done.keys
            tidied.update(done.tidied)
            return forgotten == target

        await eventually(swept, timeout=30, interval=0.2, message=f"round {round_}'s keys forgotten")
        sizes.append(int((await peek.rows(_BUCKET_SIZE))[0][0]))

    # 24,000 keys went through a bucket holding at most 2,000 at a time: its size levels off after the
    # first rounds (360 KB from round 2 on; without the vacuums it grew by every round, to 2.8x round 4's).
    assert sizes[-1] <= sizes[3] * 1.25, sizes
    assert any(name.endswith(".event_keys_b0") for name in tidied)
    assert int((await peek.rows(_BUCKET_VACUUMS))[0][0]) > 0
    assert await peek.rows("SELECT count(*) FROM event_keys") == [(0,)]
    assert (await counters(peek))["unique_processed"] == per_round * 12
