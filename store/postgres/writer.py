"""The PostgreSQL writer: one consumer's connection; several consumers may write the same database at once."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from store.base import (
    DEAD_LETTERS_KEPT,
    Backend,
    BatchResult,
    Durability,
    Message,
    Rejected,
    StoreError,
    count_duplicates,
    receipt_rows,
    receipts_expired_before,
    rejected_in,
    sort_batch,
    utc_now,
)
from store.postgres.schema import (
    BACKEND,
    DB_ERRORS,
    SLOTS,
    connect,
    durability_of,
    migrate,
    where,
)

log = logging.getLogger(__name__)

_INSERT = """
    INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)
    SELECT s, t, e, ts, src, p, $7::text
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS u(s, t, e, ts, src, p)
    ON CONFLICT (topic, event_id) DO NOTHING
    RETURNING topic, event_id
"""
_STORED = """
    SELECT topic, event_id, timestamp, source, payload FROM events
    WHERE (topic, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
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
# A topic's first-seen row is written once, by the first batch that stores it; only batches seeing a topic
# for the first time at the same moment meet here, in topic order. Its counts go to the leased slot's rows,
# which no concurrent batch touches.
_TOPICS = """
    WITH first_seen AS (
        INSERT INTO topics (topic, first_seq)
        SELECT t, (SELECT MIN(seq) FROM events WHERE topic = t) FROM unnest($1::text[]) AS u(t)
        WHERE NOT EXISTS (SELECT FROM topics WHERE topic = t)
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
# Rows only from transactions older than every running one: nothing can commit below them any more.

# A batch that lost a deadlock or a serialization check is retried at once this many times (then the
# consumer's own backoff takes over); the locks are taken in one order, so this should stay rare.
_TRANSACTION_RETRIES = 5


class PostgresWriter:
    """One consumer's connection; several consumers may write the same database at once."""

    backend: Backend = BACKEND

    def __init__(self, url: str, conn: Any, before_commit: Callable[[], None] | None) -> None:
        self._url = url
        self._conn: Any = conn
        self._before_commit = before_commit  # fault injection for the crash tests (consumer/faults.py)

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
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 5)
            except DB_ERRORS:
                conn.terminate()

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
        """Apply a batch in ONE transaction; retried at once when it loses a deadlock or serialization check.

        Raises StoreError with nothing applied; the caller must then ack nothing.
        """
        for attempt in range(1, _TRANSACTION_RETRIES + 1):
            try:
                return await self._apply(await self._connection(), messages, receipts)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                if attempt == _TRANSACTION_RETRIES:
                    raise self._error(exc) from exc
                log.warning(
                    "batch rolled back by %s; retrying, %d attempts left",
                    type(exc).__name__,
                    _TRANSACTION_RETRIES - attempt,
                )
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
            except DB_ERRORS as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _apply(
        self, conn: Any, messages: Sequence[Message], receipts: Sequence[str | None] | None
    ) -> BatchResult:
        batch = sort_batch(messages)
        received_at = utc_now()
        async with conn.transaction():
            stored: dict[tuple[str, str], tuple[str, str, str]] = {}
            inserted: set[tuple[str, str]] = set()
            if batch.first:
                # Seqs in arrival order (paging shows a batch as it came, as on SQLite) ...
                seqs = await conn.fetch("SELECT eventagg_allocate($1)", len(batch.first))
                numbered = sorted(
                    zip((r[0] for r in seqs), batch.first.values(), strict=True),
                    key=lambda pair: (pair[1].topic, pair[1].event_id),
                )
                # ... but inserted in key order: concurrent batches wait on each other's keys in one order,
                # so two consumers holding the same keys cannot deadlock.
                rows = await conn.fetch(
                    _INSERT,
                    [s for s, _ in numbered],
                    [e.topic for _, e in numbered],
                    [e.event_id for _, e in numbered],
                    [e.timestamp for _, e in numbered],
                    [e.source for _, e in numbered],
                    [e.payload_json() for _, e in numbered],
                    received_at,
                )
                inserted = {(r[0], r[1]) for r in rows}
                existing = [key for key in batch.first if key not in inserted]
                if existing:
                    # What ON CONFLICT skipped is stored and committed (by an earlier batch or a concurrent
                    # consumer, whose commit the insert waited for): this statement's snapshot sees it.
                    for r in await conn.fetch(_STORED, [k[0] for k in existing], [k[1] for k in existing]):
                        stored[(r[0], r[1])] = (r[2], r[3], r[4])
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
                await conn.execute(_TOPICS, *(list(column) for column in zip(*per_topic, strict=True)), slot)
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
