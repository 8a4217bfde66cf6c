"""The PostgreSQL store's retention: sweeps (one consumer at a time, on a connection of their own) that drop
whole expired partitions and forget old keys in short transactions, and what the store holds now.

Lock levels (PostgreSQL 15): a batch takes ROW EXCLUSIVE on `events` and on the partition its moment routes
to, and reads take ACCESS SHARE on the partitions their plan names (plans are custom, so a cutoff prunes the
expired ones away). DETACH PARTITION CONCURRENTLY takes SHARE UPDATE EXCLUSIVE on `events`, which conflicts
with neither, and ACCESS EXCLUSIVE only on the whole-expired partition, which no batch and no read's plan
names; it waits for the transactions already running instead of making them wait. A detached table is then
dropped with the totals in one transaction of its own. Forgotten keys are deleted in chunks that skip the rows
a batch holds (SKIP LOCKED), so the sweep never waits for a batch, and a batch waits at most one chunk.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from store.postgres.keys import table as bucket_table
from store.postgres.partitions import (
    LIST_DETACHED,
    Partition,
    cover_until,
    ensure,
    micros,
    partitions,
    recorded_retention,
    time_us,
    width,
)
from store.postgres.upkeep import tidy
from store.retention import Holdings, Retention, SweepResult

SWEEP_LOCK: Final = 0x65766167_00000004
Hook = Callable[[], None] | None
_ALL = "seq, topic, event_id, timestamp, source, payload, received_at, txid"
KEY_CHUNK: Final = 5_000

# Sealed key buckets whose newest key was received before $1: forgotten whole (store/postgres/keys.py).
_FORGOTTEN_BUCKETS = """
    SELECT bucket FROM key_buckets
    WHERE newest < $1 AND bucket < (SELECT max(bucket) FROM key_buckets) ORDER BY bucket
"""
# Keys received before $1, oldest first; then those of them no batch holds, locked in key order and deleted
# (a batch may have refreshed one meanwhile: the condition is checked again on the row it locks), a bucket
# at a time (a plan then names that bucket's table only).
_CANDIDATES = "SELECT bucket, key_hash FROM event_keys WHERE received_at < $1 ORDER BY received_at LIMIT $2"
_FORGET = """
    WITH doomed AS (
        SELECT key_hash FROM event_keys WHERE bucket = $3 AND key_hash = ANY($2::bytea[]) AND received_at < $1
        ORDER BY key_hash FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM event_keys AS k USING doomed
        WHERE k.bucket = $3 AND k.key_hash = doomed.key_hash AND k.received_at < $1 RETURNING 1
    ), counted AS (
        UPDATE sweep_totals SET keys = keys + (SELECT count(*) FROM gone)
    )
    SELECT count(*) FROM gone
"""

# The store's own relations (every partition is named events_p_..., every key bucket event_keys_b...): its
# size on disk, indexes and TOAST included. A schema may hold other tables besides.
TABLES: Final = (
    "key_buckets",
    "counter_slots",
    "topics",
    "topic_counts",
    "consumer_state",
    "writer_slots",
    "receipts",
    "dead_letters",
    "dead_letter_counts",
    "dead_letter_totals",
    "sweep_totals",
    "eventagg_schema",
)
_SIZE = r"""
    SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class AS c
    WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'counter_slots'::regclass)
      AND c.relkind = 'r'
      AND (c.relname = ANY($1::text[]) OR c.relname LIKE 'events\_p\_%' OR c.relname LIKE 'event\_keys\_b%')
"""


class Swept(Exception):
    """A table counted as expired was dropped meanwhile (with the swept total): count again."""


class _Timer:
    def __init__(self) -> None:
        self.transactions = 0
        self.longest = 0.0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.transactions += 1
            self.longest = max(self.longest, time.perf_counter() - started)


async def sweep(conn: Any, before_commit: Hook = None) -> SweepResult:
    """One sweep by the retention the store records, then the vacuum and analyze the store's tables need
    (store/postgres/upkeep.py), unless another consumer is sweeping. `before_commit` runs inside each
    transaction that removes something, and right before each detach (fault injection for the crash tests)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK):
        return SweepResult(skipped="another consumer is sweeping")
    try:
        result = await _sweep(conn, before_commit)
        return dataclasses.replace(result, tidied=tuple(await tidy(conn)))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)


async def _sweep(conn: Any, before_commit: Hook) -> SweepResult:
    timer = _Timer()
    # A detach waits for the transactions already running (holding nothing they need); past a minute, the
    # sweep gives up and the next one finishes what it started.
    await conn.execute("SET lock_timeout = '1min'")
    retention = await recorded_retention(conn)
    with timer.transaction():
        found = await cover_until(conn, retention)
    if retention == Retention():
        return SweepResult(transactions=1, longest=timer.longest, skipped="the store keeps every event")
    for partition in found:
        if partition.pending:  # a sweep stopped inside DETACH CONCURRENTLY
            with timer.transaction():
                await conn.execute(f"ALTER TABLE events DETACH PARTITION {partition.name} FINALIZE")
    cutoff = retention.event_cutoff()
    if cutoff is not None:
        for partition in found:
            if not partition.pending and await _expired(conn, partition, cutoff, retention):
                if before_commit is not None:
                    before_commit()  # DETACH CONCURRENTLY runs its own transactions: the hook goes first
                with timer.transaction():  # two transactions inside; it waits for, never blocks, the others
                    await conn.execute(f"ALTER TABLE events DETACH PARTITION {partition.name} CONCURRENTLY")
    events = 0
    for (name,) in await conn.fetch(LIST_DETACHED):
        events += await _drop(conn, str(name), timer, before_commit)
    keys = 0
    key_cutoff = None if retention.keys is None else datetime.now(UTC) - retention.keys
    if key_cutoff is not None:
        for (bucket,) in await conn.fetch(_FORGOTTEN_BUCKETS, key_cutoff):
            keys += await _drop_bucket(conn, int(bucket), timer, before_commit)
    while key_cutoff is not None:
        with timer.transaction():
            async with conn.transaction():
                candidates = await conn.fetch(_CANDIDATES, key_cutoff, KEY_CHUNK)
                by_bucket: dict[int, list[bytes]] = {}
                for bucket, key in candidates:
                    by_bucket.setdefault(int(bucket), []).append(bytes(key))
                for bucket, hashes in sorted(by_bucket.items()):
                    keys += int(await conn.fetchval(_FORGET, key_cutoff, hashes, bucket))
                if candidates and before_commit is not None:
                    before_commit()
        if len(candidates) < KEY_CHUNK:
            break
    return SweepResult(events, keys, timer.transactions, timer.longest)


async def _drop_bucket(conn: Any, bucket: int, timer: _Timer, before_commit: Hook) -> int:
    """Forget a sealed key bucket whole, with the swept total, in one transaction; the keys it removed.
    `event_keys` is locked first, as batches and reads lock it before its buckets: the drop waits for the
    transactions using it (a batch's length), and they for it (one DROP)."""
    with timer.transaction():
        async with conn.transaction():
            await conn.execute("LOCK TABLE event_keys IN ACCESS EXCLUSIVE MODE")
            removed = int(await conn.fetchval(f"SELECT count(*) FROM {bucket_table(bucket)}"))
            await conn.execute(f"DROP TABLE {bucket_table(bucket)}")
            await conn.execute("DELETE FROM key_buckets WHERE bucket = $1", bucket)
            await conn.execute("UPDATE sweep_totals SET keys = keys + $1", removed)
            if before_commit is not None:
                before_commit()
    return removed


async def _expired(conn: Any, partition: Partition, cutoff: str, retention: Retention) -> bool:
    """Whether every event of the partition has expired: its whole range, or (ended a width ago, so no batch
    writes to it any more) each of its rows."""
    if partition.hi is None:
        return False
    if partition.hi <= micros(cutoff):
        return True
    if partition.hi > time_us() - width(retention) // timedelta(microseconds=1):
        return False
    newest = await conn.fetchval(f'SELECT MAX(received_at COLLATE "C") FROM {partition.name}')
    return newest is not None and str(newest) < cutoff


async def _drop(conn: Any, name: str, timer: _Timer, before_commit: Hook) -> int:
    """Drop a detached table with the swept total, in one transaction; returns the events it removed. An
    event that had not expired after all (a consumer's clock far behind, writing into a partition whose rows
    had all expired) goes back into `events` first, in the same transaction: none is lost."""
    rows = int(await conn.fetchval(f"SELECT count(*) FROM {name}"))  # detached: nothing adds to it any more
    cutoff = (await recorded_retention(conn)).event_cutoff() or "~"  # "~" sorts after every moment
    live = await conn.fetchrow(
        f'SELECT count(*), MIN(received_at COLLATE "C"), MAX(received_at COLLATE "C") FROM {name}'
        ' WHERE received_at COLLATE "C" >= $1',
        cutoff,
    )
    if live[0]:
        await ensure(conn, micros(live[2]) + 1, since=micros(live[1]))
    with timer.transaction():
        async with conn.transaction():
            if live[0]:
                await conn.execute(
                    f"INSERT INTO events ({_ALL}) SELECT {_ALL} FROM {name}"
                    ' WHERE received_at COLLATE "C" >= $1',
                    cutoff,
                )
            await conn.execute(f"DROP TABLE {name}")
            await conn.execute("UPDATE sweep_totals SET events = events + $1", rows - live[0])
            if before_commit is not None:
                before_commit()
    return rows - int(live[0])


async def holdings(conn: Any, retention: Retention, unique_processed: int) -> Holdings:
    """What reads can return now, counted cheaply: every event ever stored, less those the sweeps removed,
    less those expired and not swept yet (a partition's width at most, when the sweeps keep up)."""
    swept = int(await conn.fetchval("SELECT events FROM sweep_totals"))
    cutoff = retention.event_cutoff()
    if cutoff is None:
        expired = 0
        oldest = await conn.fetchval('SELECT MIN(received_at COLLATE "C") FROM events')
    else:
        expired = int(
            await conn.fetchval('SELECT count(*) FROM events WHERE received_at COLLATE "C" < $1', cutoff)
        )
        oldest = await conn.fetchval(
            'SELECT MIN(received_at COLLATE "C") FROM events WHERE received_at COLLATE "C" >= $1', cutoff
        )
    # Tables a stopped sweep left detached or pending detach: expired, out of `events`, not swept yet.
    left = [str(r[0]) for r in await conn.fetch(LIST_DETACHED)]
    left += [p.name for p in await partitions(conn) if p.pending]
    for name in left:
        try:
            expired += int(await conn.fetchval(f"SELECT count(*) FROM {name}"))
        except asyncpg.UndefinedTableError as exc:
            raise Swept(name) from exc
    size = int(await conn.fetchval(_SIZE, list(TABLES)))
    stored = unique_processed - swept - expired
    return Holdings(
        stored, unique_processed - stored, None if oldest is None else str(oldest), size, retention
    )
