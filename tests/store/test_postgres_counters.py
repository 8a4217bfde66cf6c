"""PostgreSQL's striped counters: concurrent batches do not wait on each other's counter rows, reads sum the
slots exactly, and a store written before the stripes migrates to them with every count and order kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from store import open_reader
from store.postgres import SCHEMA_VERSION, SLOTS, WRITER_APPLICATION, PostgresWriter
from store.postgres.batch import COUNTERS, LEASE, TOPICS
from store.postgres.schema import MIGRATIONS
from tests.harness.postgres import fresh_schema
from tests.harness.stores import PostgresPeek, StoreSettings, counted_per_topic, counters, topic_counts
from tests.harness.waiting import eventually
from tests.store.test_writer import event


@pytest.fixture
def settings(postgres_database: str, tmp_path: Path) -> StoreSettings:
    return StoreSettings(tmp_path / "events.db", fresh_schema(postgres_database))


@pytest.fixture
def url(settings: StoreSettings) -> str:
    assert settings.database_url is not None
    return settings.database_url


@pytest.fixture
async def writer(url: str) -> AsyncIterator[PostgresWriter]:
    opened = await PostgresWriter.open(url)
    try:
        yield opened
    finally:
        await opened.close()


async def open_batch(url: str, topic: str) -> tuple[Any, Any]:
    """Another consumer's batch, stopped before its commit: it holds a slot, its topic and counter rows."""
    conn = await asyncpg.connect(url, server_settings={"application_name": WRITER_APPLICATION})
    transaction = conn.transaction()
    await transaction.start()
    slot = await conn.fetchval(LEASE, "2026-11-22T10:00:00.000000Z")
    first_seq = await conn.fetchval("SELECT nextval('events_seq')")  # of the event it stores
    await conn.execute(TOPICS, [topic], [1], [0], [0], slot, [first_seq])
    await conn.execute(COUNTERS, ["received", "unique_processed"], [1, 1], slot)
    return conn, transaction


async def waiting_on_held_slots(watcher: Any, holders: set[int]) -> None:
    """Until one backend (the writer's) waits on a slot's row lock that only the held batches can release."""

    async def lock_wait() -> list[Any]:
        rows = await watcher.fetch(
            """
            SELECT pid, wait_event_type, query, pg_blocking_pids(pid) AS blockers FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND NOT (pid = ANY($1::int[]))
              AND wait_event_type = 'Lock' AND query LIKE 'UPDATE writer_slots%'
            """,
            list(holders),
        )
        return [r for r in rows if r["blockers"] and set(r["blockers"]) <= holders]

    waiting = await eventually(lock_wait, 30, 0.02, message="the batch waiting on a held slot's lock")
    assert len(waiting) == 1, waiting


async def test_a_batch_commits_while_another_batch_holds_its_counter_and_topic_rows_uncommitted(
    writer: PostgresWriter, url: str
) -> None:
    await writer.apply([[event("first", topic="orders")]])
    other, transaction = await open_batch(url, "orders")
    try:
        # Before the stripes, this waited for the other batch's commit on the counter rows.
        result = await asyncio.wait_for(writer.apply([[event("second", topic="orders")]]), 5)
        assert result.unique_processed == 1
        await transaction.commit()
    finally:
        await other.close()

    peek = PostgresPeek(url)
    assert (await counters(peek))["received"] == 3
    assert await topic_counts(peek) == {"orders": 3}


async def test_with_every_slot_held_a_batch_waits_for_one_and_then_commits(
    writer: PostgresWriter, url: str
) -> None:
    held = [await open_batch(url, f"t{i:02}") for i in range(SLOTS)]
    holders = {conn.get_server_pid() for conn, _ in held}
    watcher = await asyncpg.connect(url)
    try:
        applying = asyncio.ensure_future(writer.apply([[event("late", topic="t00")]]))

        await waiting_on_held_slots(watcher, holders)
        assert not applying.done(), "all slots are held: the batch waits for one"
        for _, transaction in held:
            await transaction.commit()
        assert (await asyncio.wait_for(applying, 5)).unique_processed == 1
    finally:
        await watcher.close()
        for conn, _ in held:
            await conn.close()

    peek = PostgresPeek(url)
    assert (await counters(peek))["received"] == SLOTS + 1
    assert (await topic_counts(peek))["t00"] == 2


async def test_many_writers_seeing_the_same_new_topics_at_once_record_each_topic_once_with_exact_counts(
    url: str, settings: StoreSettings
) -> None:
    writers = [await PostgresWriter.open(url) for _ in range(6)]
    reader = open_reader(settings)
    try:
        for round_ in range(5):
            topics = [f"r{round_}.{name}" for name in ("c", "a", "b")]
            await asyncio.gather(
                *(
                    w.apply([[event(f"w{i}-{t}", topic=t)] for t in (topics if i % 2 else topics[::-1])])
                    for i, w in enumerate(writers)
                )
            )
        snapshot = await reader.snapshot()
    finally:
        for w in writers:
            await w.close()
        await reader.close()

    peek = PostgresPeek(url)
    assert await topic_counts(peek) == await counted_per_topic(peek)
    assert set(snapshot.topic_counts.values()) == {6}
    assert len(snapshot.topic_counts) == 15
    assert snapshot.counters["unique_processed"] == 90 == snapshot.counters["received"]
    # First-seen order: a topic's place is its first stored event, so every topic of round r comes before
    # every topic of round r + 1 (within a round the batches ran at once).
    rounds = [int(topic[1]) for topic in snapshot.topic_counts]
    assert rounds == sorted(rounds)
    assert await peek.rows("SELECT topic FROM topics WHERE first_seq IS NULL") == []


# --- migration from the unstriped schema --------------------------------------------------------------


async def store_before_stripes(url: str) -> None:
    """A store at the previous schema version, with what that version's writer would have left in it."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE eventagg_schema (version integer NOT NULL)")
            for version, script in enumerate(MIGRATIONS[:5], start=1):
                await conn.execute(script)
                await conn.execute("INSERT INTO eventagg_schema (version) VALUES ($1)", version)
            stored = [("zeta", "a"), ("auth", "b"), ("zeta", "c"), ("mid", "d"), ("auth", "e"), ("auth", "f")]
            for seq, (topic, event_id) in enumerate(stored, start=1):
                await conn.execute(
                    "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
                    " VALUES ($1, $2, $3, '2026-11-22T10:15:00Z', 's', '{}', '2026-11-22T10:15:01.000000Z')",
                    seq,
                    topic,
                    event_id,
                )
            await conn.execute("SELECT setval('events_seq', $1)", len(stored))
            await conn.executemany(
                "UPDATE counters SET value = $2 WHERE name = $1",
                [
                    ("received", 12),
                    ("unique_processed", 6),
                    ("duplicate_dropped", 5),
                    ("invalid", 1),
                    ("conflicts", 2),
                ],
            )
            await conn.executemany(
                "INSERT INTO topics (topic, count, first_seq, duplicates, conflicts)"
                " VALUES ($1, $2, $3, $4, $5)",
                [("zeta", 2, 1, 3, 1), ("auth", 3, 2, 2, 1), ("mid", 1, 4, 0, 0)],
            )
            await conn.executemany(
                "INSERT INTO consumer_state (key, value) VALUES ($1, $2)",
                [
                    ("started_at", "2026-11-22T10:00:00Z"),
                    ("synchronous_commit", "on"),
                    ("fsync", "on"),
                    ("last_commit_at", "2026-11-22T10:15:01.000000Z"),
                ],
            )
    finally:
        await conn.close()


async def test_a_store_written_before_the_stripes_migrates_with_every_counter_topic_and_order_exact(
    url: str, settings: StoreSettings
) -> None:
    await store_before_stripes(url)
    reader = open_reader(settings)
    try:
        writer = await PostgresWriter.open(url)
        try:
            migrated = await reader.snapshot()
            assert migrated.counters == {
                "received": 12,
                "unique_processed": 6,
                "duplicate_dropped": 5,
                "invalid": 1,
                "conflicts": 2,
            }
            assert list(migrated.topic_counts.items()) == [("zeta", 2), ("auth", 3), ("mid", 1)]
            assert list(migrated.topic_duplicates.items()) == [("zeta", 3), ("auth", 2), ("mid", 0)]
            assert list(migrated.topic_conflicts.items()) == [("zeta", 1), ("auth", 1), ("mid", 0)]
            assert migrated.consumer == {
                "started_at": "2026-11-22T10:00:00Z",
                "synchronous_commit": "on",
                "fsync": "on",
                "last_commit_at": "2026-11-22T10:15:01.000000Z",
            }
            assert migrated.durability.durable is True

            await writer.apply([[event("b", topic="auth")], [event("g", topic="alpha")], None])
            after = await reader.snapshot()
        finally:
            await writer.close()
    finally:
        await reader.close()

    assert after.counters == {
        "received": 15,
        "unique_processed": 7,
        "duplicate_dropped": 6,
        "invalid": 2,
        "conflicts": 3,  # "b" was stored from another source
    }
    assert list(after.topic_counts.items()) == [("zeta", 2), ("auth", 3), ("mid", 1), ("alpha", 1)]
    assert after.topic_duplicates["auth"] == 3
    assert after.consumer["last_commit_at"] > "2026-11-22T10:15:01.000000Z"
    peek = PostgresPeek(url)
    assert (await peek.rows("SELECT max(version) FROM eventagg_schema"))[0][0] == SCHEMA_VERSION
    assert await peek.rows("SELECT key FROM consumer_state WHERE key = 'last_commit_at'") == []
    assert (await peek.rows("SELECT count(*) FROM counter_slots"))[0][0] == 5 * SLOTS


async def test_an_earlier_release_writing_to_a_migrated_store_fails_its_batch_rather_than_miscount(
    url: str, writer: PostgresWriter
) -> None:
    conn = await asyncpg.connect(url)
    try:
        # The statements an earlier release's writer moves its counts with: they must not add to every slot.
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.execute("UPDATE counters SET value = value + $1 WHERE name = $2", 1, "invalid")
        with pytest.raises(asyncpg.UndefinedColumnError):
            await conn.execute(
                "INSERT INTO topics (topic, count, first_seq, duplicates, conflicts) VALUES ('a', 1, 1, 0, 0)"
            )
    finally:
        await conn.close()
    assert (await writer.counters())["invalid"] == 0
