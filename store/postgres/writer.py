"""The PostgreSQL writer: one consumer's connection; several consumers may write the same database at once."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from contract import commits
from store.base import (
    Backend,
    BatchResult,
    Durability,
    Message,
    ReceiptSweep,
    StoredCopy,
    StoreError,
    count_duplicates,
    receipt_rows,
    receipts_expired_before,
    rejected_in,
    sort_batch,
)
from store.clock import utc_now
from store.postgres import batch as sql
from store.postgres import keys, search
from store.postgres.notices import CHANNEL, notify
from store.postgres.numbering import Numbering
from store.postgres.partitions import Coverage, cover, micros, recorded_retention
from store.postgres.retention import sweep
from store.postgres.schema import (
    BACKEND,
    BATCH_PLANNING,
    DB_ERRORS,
    SLOTS,
    SWEEPER_APPLICATION,
    WRITER_APPLICATION,
    batch_transaction,
    connect,
    durability_of,
    migrate,
    where,
)
from store.retention import Retention, SweepResult

log = logging.getLogger(__name__)

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
        self._coverage = Coverage()
        self._receipt_sweep = ReceiptSweep()
        self._sweeper: Any = None  # the sweep's own connection: this one runs the batches meanwhile
        self._keys = keys.KeyBuckets()
        self._numbering = Numbering(self._keys)

    @classmethod
    async def open(cls, url: str, before_commit: Callable[[], None] | None = None) -> PostgresWriter:
        conn = await connect(url, WRITER_APPLICATION, BATCH_PLANNING)
        try:
            await migrate(conn, url)
            await keys.finish_sealing(conn)
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
                await conn.executemany(sql.STATE, list(retention.as_state().items()))
            await cover(conn, self._coverage)
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        return before

    async def record_search(self, on: bool) -> bool:
        try:
            return await search.record(await self._connection(), on, WRITER_APPLICATION)
        except DB_ERRORS as exc:
            raise self._error(exc) from exc

    async def sweep(self, before_commit: Callable[[], None] | None = None) -> SweepResult:
        try:
            if self._sweeper is None or self._sweeper.is_closed():
                self._sweeper = await connect(self._url, SWEEPER_APPLICATION)
            return await sweep(self._sweeper, before_commit)
        except DB_ERRORS as exc:
            if self._sweeper is not None:
                conn, self._sweeper = self._sweeper, None
                conn.terminate()
            raise StoreError(f"{where(self._url)}: sweep: {type(exc).__name__}: {exc}") from exc

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._url, WRITER_APPLICATION, BATCH_PLANNING)
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
                await conn.executemany(sql.STATE, [("started_at", started_at), *settings.items()])
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
                asyncpg.UndefinedTableError,  # a key bucket forgotten since the last batch (numbering.py)
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
        async with batch_transaction(conn, f"BEGIN; {keys.LOCK_SHARED}" if batch.first else "BEGIN"):
            stored: dict[tuple[str, str], StoredCopy] = {}
            inserted: set[tuple[str, str]] = set()
            first_seqs: dict[str, int] = {}
            last_seq = 0
            if batch.first:  # KEYS_LOCK held (taken with BEGIN)
                # Seqs in arrival order (paging shows a batch as it came, as on SQLite); the keys no bucket
                # holds inserted with their events (store/postgres/numbering.py).
                found = await self._numbering.insert(conn, batch.first, received_at, moment)
                numbered = found.numbered
                last_seq = max(s for s, _, _ in numbered.values())
                new = [numbered[h] for h in found.inserted]
                inserted = {key for _, key, _ in new}
                for seq, (topic, _), _ in new:
                    first_seqs[topic] = min(seq, first_seqs.get(topic, seq))
                if len(new) < len(numbered):
                    known = [(h, *at) for h, at in found.held.items()]
                    taken = set(found.inserted)
                    others = [h for h in found.fresh if h not in taken]
                    if others:
                        known += [
                            (bytes(r[0]), int(r[1]), r[2])
                            for r in await conn.fetch(keys.known_open(self._keys.open), others)
                        ]
                    stored = await sql.stored_copies(conn, numbered, known, found.retention, moment)
            count_duplicates(batch, stored, inserted)
            result = batch.result
            rejected = rejected_in(messages)
            if rejected:
                letters = await sql.dead_letters_not_kept_yet(conn, rejected)
                result.known_again(len(rejected) - len(letters))
                rejected = letters
            marked = receipt_rows(messages, receipts, batch, inserted)
            result.receipts = marked  # until the store says which of them it had already
            per_topic = result.topic_deltas(Counter(key[0] for key in inserted))
            columns: list[list[Any]] = [list(column) for column in zip(*per_topic, strict=True)] or [[]] * 4
            first = [first_seqs.get(t) for t in columns[0]]
            deltas = result.deltas()
            names, amounts = [name for name, _ in deltas], [d for _, d in deltas]
            slot, recorded, sent = await conn.fetchrow(
                sql.LEASED_COUNTS,
                received_at,
                *columns,
                first,
                names,
                amounts,
                CHANNEL,
                _notices(marked, result),
                *([list(c) for c in zip(*marked, strict=True)] or [[]] * 3),
            )
            # The figures of the receipts this commit inserted, for the commit notice; one stored already
            # (a redelivered message) keeps its first commit's figures and is left to the api's read.
            if len(recorded) < len(marked):
                kept = set(recorded)
                result.receipts = [row for row in marked if row[0] in kept]
            if slot is None:  # every slot held: wait for one, then count on it
                slot = await conn.fetchval(sql.LEASE_ANY, received_at, random.randrange(SLOTS))
                if per_topic:
                    await conn.execute(sql.TOPICS, *columns, slot, first)
                if deltas:
                    await conn.execute(sql.COUNTERS, names, amounts, slot)
            if not sent and (notices := _notices(marked, result)):
                await notify(conn, notices)
            if marked and self._receipt_sweep.due():
                await conn.execute("DELETE FROM receipts WHERE committed_at < $1", receipts_expired_before())
            if rejected:
                await sql.keep_dead_letters(conn, rejected)
            if self._before_commit is not None:
                self._before_commit()
        if self._keys.full(last_seq):
            try:
                await self._keys.seal(conn)
            except DB_ERRORS as exc:  # the batch is committed: the next full batch seals
                log.warning("sealing key bucket %d failed: %s", self._keys.open, self._error(exc))
        return result

    async def counters(self) -> dict[str, int]:
        rows = await (await self._connection()).fetch(sql.SUMMED_COUNTERS)
        return {str(r[0]): int(r[1]) for r in rows}


def _notices(marked: list[tuple[str, int, int]], result: BatchResult) -> list[str]:
    """The commit's notice (store/postgres/notices.py), sent by PostgreSQL when, and only when, it commits:
    for batches someone may wait on, and for every batch that stored an event (the live tail reads it)."""
    return [
        part.decode()
        for part in commits.parts([r[0] for r in marked], result.unique_processed, result.receipts)
    ]
