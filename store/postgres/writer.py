"""The PostgreSQL writer: one consumer's connection; several consumers may write the same database at once."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from contract.event import Event
from store.base import (
    DEAD_LETTERS_KEPT,
    Backend,
    BatchResult,
    Durability,
    Message,
    Rejected,
    Retention,
    StoredCopy,
    StoreError,
    SweepResult,
    count_duplicates,
    key_hash,
    receipt_rows,
    receipts_expired_before,
    rejected_in,
    sort_batch,
    utc_now,
    utc_text,
)
from store.postgres.partitions import Coverage, cover, micros, recorded_retention
from store.postgres.retention import sweep
from store.postgres.schema import (
    BACKEND,
    DB_ERRORS,
    SLOTS,
    SWEEPER_APPLICATION,
    connect,
    durability_of,
    migrate,
    where,
)

log = logging.getLogger(__name__)

# Seqs for the batch's new keys, with the retention the store records (read in the batch's transaction: a
# retention recorded by another consumer counts from its commit on).
_ALLOCATE = """
    SELECT s, (SELECT value FROM consumer_state WHERE key = 'retention_seconds'),
        (SELECT value FROM consumer_state WHERE key = 'key_retention_seconds')
    FROM eventagg_allocate($1) AS s
"""
# Dedup: a key inserted is new; a key already there is a duplicate unless it was forgotten (received before
# $4, KEY_RETENTION's cutoff, NULL when keys are kept forever): then it takes the new seq and moment, and its
# event is stored again. In key order: concurrent batches wait on each other's keys in one order, so two
# consumers holding the same keys cannot deadlock.
_KEYS = """
    INSERT INTO event_keys (key_hash, seq, received_at)
    SELECT h, s, $3::timestamptz FROM unnest($1::bytea[], $2::bigint[]) AS u(h, s) ORDER BY h
    ON CONFLICT (key_hash) DO UPDATE SET seq = excluded.seq, received_at = excluded.received_at
    WHERE event_keys.received_at < $4::timestamptz
    RETURNING key_hash
"""
_INSERT = """
    INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)
    SELECT s, t, e, ts, src, p, $7::text
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS u(s, t, e, ts, src, p)
"""
# What the keys the batch did not insert hold (committed by an earlier batch or a concurrent consumer, whose
# commit the insert waited for: this statement's snapshot sees it) ...
_KNOWN = "SELECT key_hash, seq, received_at FROM event_keys WHERE key_hash = ANY($1::bytea[])"
# ... and the stored copies of those whose event has not expired, found by moment and seq: the planner reads
# only the partitions of those moments.
_COPIES = """
    SELECT seq, timestamp, source, payload FROM events
    WHERE (received_at COLLATE "C") >= $1 AND (received_at COLLATE "C") < $2 AND seq = ANY($3::bigint[])
"""
# The slot for the rest of the transaction: the lowest one no other transaction holds, locked until the
# commit, and the batch's commit time recorded on it. SKIP LOCKED never waits; when every slot is held
# (more than SLOTS consumers) _LEASE_ANY waits for one chosen at random. It runs after eventagg_allocate:
# locking the row assigns the transaction its id, which must come with its seqs (see above).
_LEASE = """
    UPDATE writer_slots SET last_commit_at = $1
    WHERE slot = (SELECT slot FROM writer_slots ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING slot
"""
_LEASE_ANY = "UPDATE writer_slots SET last_commit_at = $1 WHERE slot = $2 RETURNING slot"
# A topic's first-seen row is written once, by the first batch that stores it (with the batch's lowest seq of
# it, $6); only batches seeing a topic for the first time at the same moment meet here, in topic order. Its
# counts go to the leased slot's rows, which no concurrent batch touches.
_TOPICS = """
    WITH first_seen AS (
        INSERT INTO topics (topic, first_seq)
        SELECT t, f FROM unnest($1::text[], $6::bigint[]) AS u(t, f)
        WHERE f IS NOT NULL AND NOT EXISTS (SELECT FROM topics WHERE topic = t)
        ORDER BY t
        ON CONFLICT (topic) DO NOTHING
    )
    INSERT INTO topic_counts (topic, slot, count, duplicates, conflicts)
    SELECT t, $5::smallint, c, d, x
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(t, c, d, x)
    ORDER BY t
    ON CONFLICT (topic, slot) DO UPDATE SET count = topic_counts.count + excluded.count,
        duplicates = topic_counts.duplicates + excluded.duplicates,
        conflicts = topic_counts.conflicts + excluded.conflicts
"""
_COUNTERS = """
    UPDATE counter_slots AS c SET value = c.value + u.delta
    FROM unnest($1::text[], $2::bigint[]) AS u(name, delta)
    WHERE c.slot = $3 AND c.name = u.name
"""
_SUMMED_COUNTERS = "SELECT name, SUM(value)::bigint FROM counter_slots GROUP BY name"
_RECEIPTS = """
    INSERT INTO receipts (receipt, new, duplicates, committed_at)
    SELECT r, n, d, $4::text FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(r, n, d)
    ORDER BY r
    ON CONFLICT (receipt) DO NOTHING
"""
_STATE = """
    INSERT INTO consumer_state (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
_DEAD_LETTER = """
    INSERT INTO dead_letters (at, kind, reason, routing_key, body, size, truncated)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::bool[]
    )
"""
_DEAD_LETTER_COUNT = """
    INSERT INTO dead_letter_counts (kind, count)
    SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 1
    ON CONFLICT (kind) DO UPDATE SET count = dead_letter_counts.count + excluded.count
"""
# Everything older than the newest DEAD_LETTERS_KEPT; only in a batch that rejected something.
_DEAD_LETTER_TRIM = """
    DELETE FROM dead_letters WHERE id < (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET $1)
"""
# A batch that lost a deadlock or a serialization check is retried at once this many times (then the
# consumer's own backoff takes over); the locks are taken in one order, so this should stay rare.
_TRANSACTION_RETRIES = 5
_SECOND = timedelta(seconds=1)


class PostgresWriter:
    """One consumer's connection; several consumers may write the same database at once."""

    backend: Backend = BACKEND

    def __init__(self, url: str, conn: Any, before_commit: Callable[[], None] | None) -> None:
        self._url = url
        self._conn: Any = conn
        self._before_commit = before_commit  # fault injection for the crash tests (consumer/faults.py)
        self._coverage = Coverage()
        self._sweeper: Any = None  # the sweep's own connection: this one runs the batches meanwhile

    @classmethod
    async def open(cls, url: str, before_commit: Callable[[], None] | None = None) -> PostgresWriter:
        conn = await connect(url)
        try:
            await migrate(conn, url)
        except BaseException:
            await conn.close()
            raise
        return cls(url, conn, before_commit)

    async def close(self) -> None:
        for conn in (self._conn, self._sweeper):
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except DB_ERRORS:
                    conn.terminate()
        self._conn = self._sweeper = None

    async def record_retention(self, retention: Retention) -> Retention:
        try:
            conn = await self._connection()
            async with conn.transaction():
                await conn.execute("LOCK TABLE consumer_state IN SHARE ROW EXCLUSIVE MODE")
                before = await recorded_retention(conn)
                await conn.executemany(_STATE, list(retention.as_state().items()))
            await cover(conn, self._coverage)
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        return before

    async def sweep(self) -> SweepResult:
        try:
            if self._sweeper is None or self._sweeper.is_closed():
                self._sweeper = await connect(self._url, SWEEPER_APPLICATION)
            return await sweep(self._sweeper)
        except DB_ERRORS as exc:
            if self._sweeper is not None:
                conn, self._sweeper = self._sweeper, None
                conn.terminate()
            raise StoreError(f"{where(self._url)}: sweep: {type(exc).__name__}: {exc}") from exc

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._url)
        return self._conn

    async def _settings(self, conn: Any) -> dict[str, str]:
        return {
            "synchronous_commit": str(await conn.fetchval("SHOW synchronous_commit")),
            "fsync": str(await conn.fetchval("SHOW fsync")),
        }

    async def durability(self) -> Durability:
        try:
            return durability_of(await self._settings(await self._connection()))
        except DB_ERRORS as exc:
            raise self._error(exc) from exc

    async def record_start(self, started_at: str) -> None:
        try:
            conn = await self._connection()
            settings = await self._settings(conn)
            async with conn.transaction():
                await conn.executemany(_STATE, [("started_at", started_at), *settings.items()])
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        report = durability_of(settings)
        if report.warning:
            log.warning("STORE NOT DURABLE: %s", report.warning)

    def _error(self, exc: BaseException) -> StoreError:
        # An error the server reported leaves the connection usable; any other (lost, timed out, or asyncpg's
        # protocol left mid-operation) may not, so the next attempt opens a new one.
        if self._conn is not None and (self._conn.is_closed() or not isinstance(exc, asyncpg.PostgresError)):
            conn, self._conn = self._conn, None
            conn.terminate()
        return StoreError(f"{where(self._url)}: {type(exc).__name__}: {exc}")

    async def apply(
        self, messages: Sequence[Message], receipts: Sequence[str | None] | None = None
    ) -> BatchResult:
        """Apply a batch in ONE transaction; retried at once when it loses a deadlock or serialization check,
        or finds no partition for its moment (then created first).

        Raises StoreError with nothing applied; the caller must then ack nothing.
        """
        for attempt in range(1, _TRANSACTION_RETRIES + 1):
            try:
                conn = await self._connection()
                received_at = utc_now()
                moment = micros(received_at)
                if not self._coverage.ahead(moment):
                    await cover(conn, self._coverage, moment)
                return await self._apply(conn, messages, receipts, received_at)
            except (
                asyncpg.DeadlockDetectedError,
                asyncpg.SerializationError,
                asyncpg.CheckViolationError,
            ) as exc:
                if attempt == _TRANSACTION_RETRIES:
                    raise self._error(exc) from exc
                log.warning(
                    "batch rolled back by %s; retrying, %d attempts left",
                    type(exc).__name__,
                    _TRANSACTION_RETRIES - attempt,
                )
                # "no partition of relation events found for row" is a check violation: cover it first.
                self._coverage.forget()
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
            except DB_ERRORS as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _apply(
        self, conn: Any, messages: Sequence[Message], receipts: Sequence[str | None] | None, received_at: str
    ) -> BatchResult:
        batch = sort_batch(messages)
        moment = datetime.fromisoformat(received_at)
        async with conn.transaction():
            stored: dict[tuple[str, str], StoredCopy] = {}
            inserted: set[tuple[str, str]] = set()
            first_seqs: dict[str, int] = {}
            if batch.first:
                # Seqs in arrival order (paging shows a batch as it came, as on SQLite) ...
                allocated = await conn.fetch(_ALLOCATE, len(batch.first))
                retention = Retention.from_state(
                    {
                        "retention_seconds": allocated[0][1] or "0",
                        "key_retention_seconds": allocated[0][2] or "0",
                    }
                )
                numbered = {
                    key_hash(*key): (int(r[0]), key, item)
                    for r, (key, item) in zip(allocated, batch.first.items(), strict=True)
                }
                hashes = sorted(numbered)
                key_cutoff = None if retention.keys is None else moment - retention.keys
                rows = await conn.fetch(_KEYS, hashes, [numbered[h][0] for h in hashes], moment, key_cutoff)
                new = [numbered[r[0]] for r in rows]
                inserted = {key for _, key, _ in new}
                if new:
                    await conn.execute(
                        _INSERT,
                        [s for s, _, _ in new],
                        [e.topic for _, _, e in new],
                        [e.event_id for _, _, e in new],
                        [e.timestamp for _, _, e in new],
                        [e.source for _, _, e in new],
                        [e.payload_json() for _, _, e in new],
                        received_at,
                    )
                    for seq, (topic, _), _ in new:
                        first_seqs[topic] = min(seq, first_seqs.get(topic, seq))
                if len(new) < len(numbered):
                    stored = await _stored_copies(conn, numbered, inserted, retention, moment)
            count_duplicates(batch, stored, inserted)
            result = batch.result
            marked = receipt_rows(messages, receipts, batch, inserted)
            if marked:
                await conn.execute(
                    _RECEIPTS,
                    [r[0] for r in marked],
                    [r[1] for r in marked],
                    [r[2] for r in marked],
                    received_at,
                )
                await conn.execute("DELETE FROM receipts WHERE committed_at < $1", receipts_expired_before())
            slot = await conn.fetchval(_LEASE, received_at)
            if slot is None:
                slot = await conn.fetchval(_LEASE_ANY, received_at, random.randrange(SLOTS))
            per_topic = result.topic_deltas(Counter(key[0] for key in inserted))
            if per_topic:
                columns = [list(column) for column in zip(*per_topic, strict=True)]
                await conn.execute(_TOPICS, *columns, slot, [first_seqs.get(t) for t in columns[0]])
            deltas = result.deltas()
            if deltas:
                await conn.execute(_COUNTERS, [name for name, _ in deltas], [d for _, d in deltas], slot)
            rejected = rejected_in(messages)
            if rejected:
                await _keep_dead_letters(conn, rejected)
            if self._before_commit is not None:
                self._before_commit()
        return result

    async def counters(self) -> dict[str, int]:
        rows = await (await self._connection()).fetch(_SUMMED_COUNTERS)
        return {str(r[0]): int(r[1]) for r in rows}


async def _stored_copies(
    conn: Any,
    numbered: dict[bytes, tuple[int, tuple[str, str], Event]],
    inserted: set[tuple[str, str]],
    retention: Retention,
    moment: datetime,
) -> dict[tuple[str, str], StoredCopy]:
    """What each key the batch did not insert holds: the stored copy, or None when its event has expired (or
    was swept): a duplicate whose conflict cannot be seen."""
    known = await conn.fetch(_KNOWN, [h for h, (_, key, _) in numbered.items() if key not in inserted])
    cutoff = None if retention.events is None else moment - retention.events
    keys = {int(r[1]): numbered[bytes(r[0])][1] for r in known}
    live = [(int(r[1]), r[2]) for r in known if cutoff is None or r[2] >= cutoff]
    stored: dict[tuple[str, str], StoredCopy] = dict.fromkeys(keys.values())
    if live:
        lo, hi = min(m for _, m in live), max(m for _, m in live)
        # The upper bound a second later: a moment written without microseconds sorts after those with.
        copies = await conn.fetch(_COPIES, utc_text(lo), utc_text(hi + _SECOND), [s for s, _ in live])
        for seq, timestamp, source, payload in copies:
            if int(seq) in keys:
                stored[keys[int(seq)]] = (str(timestamp), str(source), str(payload))
    return stored


async def _keep_dead_letters(conn: Any, rejected: list[Rejected]) -> None:
    bodies = [item.stored_body() for item in rejected]
    await conn.execute(
        _DEAD_LETTER,
        [item.at for item in rejected],
        [item.kind for item in rejected],
        [item.reason for item in rejected],
        [item.routing_key for item in rejected],
        [body for body, _ in bodies],
        [len(item.body) for item in rejected],
        [truncated for _, truncated in bodies],
    )
    kinds = sorted(Counter(item.kind for item in rejected).items())
    await conn.execute(_DEAD_LETTER_COUNT, [k for k, _ in kinds], [n for _, n in kinds])
    status = await conn.execute(_DEAD_LETTER_TRIM, DEAD_LETTERS_KEPT - 1)
    dropped = int(status.split()[-1])  # "DELETE n"
    if dropped:
        await conn.execute("UPDATE dead_letter_totals SET dropped = dropped + $1", dropped)
