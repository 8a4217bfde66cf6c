"""A PostgreSQL store already holding many events (or only their keys), built fast with COPY into a template
database, so each repetition starts from a file-level copy of it (CREATE DATABASE ... TEMPLATE).

The schema is the product's own (a writer opens the template first and migrates it); the events are the
SQLite builder's (bench/bigstore.py: 8 topics, random UUID ids, a small payload), received long ago in one
partition, their keys in sealed key buckets with their filters (as a migration from schema 8 leaves them),
and the counters and per-topic counts as the consumers would have left them.
For tombstones, only the keys: the events were swept.

A template is named after its size and kind and kept on the server for later runs; drop it with
`DROP DATABASE eventagg_bench_template_<kind>_<count>` when done.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg

from bench.bigstore import _rows
from bench.postgres import ThrowawayDatabase, _with_database, server_url
from store.base import key_hash
from store.postgres import SCHEMA_VERSION, PostgresWriter
from store.postgres.keys import load
from store.postgres.partitions import ensure, micros

RECEIVED_AT = "2026-01-01T00:00:00.000000Z"
CHUNK = 100_000


def template_name(count: int, tombstones: bool) -> str:
    return f"eventagg_bench_template_{'tombstones' if tombstones else 'events'}_{count}_v{SCHEMA_VERSION}"


async def template(count: int, tombstones: bool, progress: Any = print) -> str:
    """The name of a template database holding `count` events (or tombstones), built when missing."""
    name = template_name(count, tombstones)
    admin = await asyncpg.connect(server_url())
    try:
        if await admin.fetchval("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name):
            return name
        building = f"{name}_building"
        await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{building}"')
        started = time.monotonic()
        await fill(_with_database(server_url(), building), count, tombstones)
        await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        progress(
            f"PostgreSQL store with {count:,} {'tombstones' if tombstones else 'events'} built in "
            f"{time.monotonic() - started:.1f}s"
        )
        return name
    finally:
        await admin.close()


def copy_of(template: str) -> ThrowawayDatabase:
    """A throwaway database that starts as a copy of `template`."""
    return ThrowawayDatabase(template=template)


def _chunks(rows: Iterator[Any]) -> Iterator[list[Any]]:
    while True:
        chunk = [row for _, row in zip(range(CHUNK), rows, strict=False)]
        if not chunk:
            return
        yield chunk


async def fill(url: str, count: int, tombstones: bool) -> None:
    """Migrate an empty store at `url` (a database, or a schema by search_path) and load it."""
    writer = await PostgresWriter.open(url)
    await writer.close()
    conn = await asyncpg.connect(url)
    try:
        moment = micros(RECEIVED_AT)
        await ensure(conn, moment + 1, since=moment)
        # The keys go to a plain table first, then into sealed buckets as a migration puts them.
        await conn.execute("DROP TABLE event_keys_b0")
        await conn.execute("DELETE FROM key_buckets")
        await conn.execute(
            "CREATE TABLE bench_keys (key_hash bytea NOT NULL, seq bigint, received_at timestamptz)"
        )
        received = datetime.fromisoformat(RECEIVED_AT)
        topics: Counter[str] = Counter()
        first: dict[str, int] = {}
        seq = 0
        for chunk in _chunks(_rows(count, 1, topics)):
            events = []
            keys = []
            for topic, event_id, timestamp, source, payload, _ in chunk:
                seq += 1
                first.setdefault(topic, seq)
                events.append((seq, topic, event_id, timestamp, source, payload, RECEIVED_AT))
                keys.append((key_hash(topic, event_id), seq, received))
            if not tombstones:
                await conn.copy_records_to_table(
                    "events",
                    records=events,
                    columns=["seq", "topic", "event_id", "timestamp", "source", "payload", "received_at"],
                )
            await conn.copy_records_to_table("bench_keys", records=keys)
        async with conn.transaction():
            await load(conn, "bench_keys")
            await conn.execute("DROP TABLE bench_keys")
        async with conn.transaction():
            await conn.execute("SELECT setval('events_seq', $1)", max(seq, 1))
            await conn.execute(
                "UPDATE counter_slots SET value = $1"
                " WHERE slot = 0 AND name IN ('received', 'unique_processed')",
                count,
            )
            await conn.executemany(
                "INSERT INTO topics (topic, first_seq) VALUES ($1, $2)", sorted(first.items())
            )
            await conn.executemany(
                "INSERT INTO topic_counts (topic, slot, count, duplicates, conflicts)"
                " VALUES ($1, 0, $2, 0, 0)",
                sorted(topics.items()),
            )
            if tombstones:
                # The events were swept (a retention since lifted): only their keys are left.
                await conn.execute("UPDATE sweep_totals SET events = $1", count)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
