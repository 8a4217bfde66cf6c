"""The SQLite writer: the consumer's one connection, each batch in one transaction."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from store.base import (
    Backend,
    BatchResult,
    Durability,
    Message,
    ReceiptSweep,
    Sorted,
    StoredCopy,
    count_duplicates,
    key_hash,
    receipt_rows,
    receipts_expired_before,
    rejected_in,
    sort_batch,
)
from store.clock import utc_now
from store.retention import KEEP_ALL, Retention, SweepResult
from store.sqlite import batch as sql
from store.sqlite import search
from store.sqlite.buckets import KeyBuckets
from store.sqlite.keys import copies
from store.sqlite.notices import NoticeSender
from store.sqlite.retention import sweep
from store.sqlite.schema import (
    BACKEND,
    WriterLock,
    configure_writer,
    durability_of,
    error,
    migrate,
    read_durability,
    received_ms,
)
from store.sqlite.thread import SqliteThread, on_thread

log = logging.getLogger(__name__)


class SqliteWriter:
    """The consumer's connection, on a thread of its own so the fsync never blocks the loop."""

    backend: Backend = BACKEND

    def __init__(
        self,
        conn: SqliteThread,
        lock: WriterLock,
        before_commit: Callable[[], None] | None,
        notices: NoticeSender,
    ) -> None:
        self._conn = conn
        self._notices = notices
        self._lock = lock
        self._before_commit = before_commit  # fault injection for the crash tests (consumer/faults.py)
        self._last_received_at = ""
        self._retention = KEEP_ALL  # the store's, as this (its only) writer recorded it
        self._buckets = KeyBuckets()
        self._search = False  # SEARCH as the store records it: whether batches index their events
        self._receipt_sweep = ReceiptSweep()

    @classmethod
    async def open(cls, path: Path, before_commit: Callable[[], None] | None = None) -> SqliteWriter:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = WriterLock(path)
        except OSError as exc:
            raise error(exc) from exc
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a batch is exactly one transaction.
            conn = await SqliteThread.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            lock.release()
            raise error(exc) from exc
        try:
            await conn.run(configure_writer, path)
            await conn.run(migrate)
        except BaseException as exc:
            await conn.close()
            lock.release()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise error(exc) from exc
            raise
        writer = cls(conn, lock, before_commit, NoticeSender(path))
        try:
            rows = await conn.fetchall("SELECT MAX(received_at) FROM events")
        except (sqlite3.Error, OSError) as exc:
            await writer.close()
            raise error(exc) from exc
        writer._last_received_at = str(rows[0][0]) if rows and rows[0][0] else ""
        try:
            writer._retention = await writer._recorded_retention()
            writer._search = await on_thread(conn, search.enabled)
            await on_thread(conn, writer._buckets.load)
        except BaseException as exc:
            await writer.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise error(exc) from exc
            raise
        return writer

    async def _recorded_retention(self) -> Retention:
        try:
            rows = await self._conn.fetchall("SELECT key, value FROM consumer_state")
            state = {str(k): str(v) for k, v in rows}
        except (sqlite3.Error, OSError) as exc:
            raise error(exc) from exc
        return Retention.from_state(state)

    async def record_retention(self, retention: Retention) -> Retention:
        before = await self._recorded_retention()
        try:
            await self._conn.run(sql.record_state, list(retention.as_state().items()))
        except (sqlite3.Error, OSError) as exc:
            raise error(exc) from exc
        self._retention = retention
        return before

    async def record_search(self, on: bool) -> bool:
        try:
            before = await on_thread(self._conn, search.record, on)
        except (sqlite3.Error, OSError) as exc:
            raise error(exc) from exc
        self._search = on
        return before

    async def sweep(self, before_commit: Callable[[], None] | None = None) -> SweepResult:
        try:
            return await sweep(self._conn, on_thread, self._retention, self._buckets, before_commit)
        except (sqlite3.Error, OSError) as exc:
            raise error(exc) from exc

    async def close(self) -> None:
        try:
            await self._conn.close()
        finally:
            self._notices.close()
            self._lock.release()

    async def durability(self) -> Durability:
        return durability_of(await self._conn.run(read_durability))

    async def record_start(self, started_at: str) -> None:
        try:
            mode = await self._conn.run(read_durability)
            await self._conn.run(sql.record_state, [("started_at", started_at), *mode.items()])
        except (sqlite3.Error, OSError) as exc:
            raise error(exc) from exc
        report = durability_of(mode)
        if report.warning:
            log.warning("STORE NOT DURABLE: %s", report.warning)

    async def apply(
        self, messages: Sequence[Message], receipts: Sequence[str | None] | None = None
    ) -> BatchResult:
        """Apply a batch in ONE transaction, set-based: a handful of statements whatever the batch size.

        Raises StoreError with nothing applied; the caller must then ack nothing.
        """
        batch = sort_batch(messages)
        # Never earlier than the last batch's, even if the clock steps back: time filters on received_at
        # rely on it growing with seq (the reader turns a time bound into a seq bound).
        received_at = max(utc_now(), self._last_received_at)
        rows = [
            (e.topic, e.event_id, e.timestamp, e.source, e.payload_json(), received_at)
            for e in batch.first.values()
        ]
        try:
            # The whole transaction in one call on the connection's thread.
            added = await on_thread(self._conn, self._write, batch, rows, messages, receipts, received_at)
        except (sqlite3.Error, OSError) as exc:
            raise error(exc) from exc
        self._last_received_at = received_at
        self._buckets.counted(added)
        if self._buckets.full:
            try:
                await on_thread(self._conn, self._buckets.seal)
            except (sqlite3.Error, OSError):
                # The batch is committed; the bucket stays open a little longer and is sealed after the next.
                log.warning("could not seal key bucket %d; trying again after the next batch", exc_info=True)
        return batch.result

    def _write(
        self,
        conn: sqlite3.Connection,
        batch: Sorted,
        rows: list[tuple[str, str, str, str, str, str]],
        messages: Sequence[Message],
        receipts: Sequence[str | None] | None,
        received_at: str,
    ) -> int:
        """The batch's transaction, run on the connection's thread; rolled back on any error. Returns how
        many keys it added to the open bucket."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            stored, hashes = self._known(conn, batch)
            new = [row for row in rows if (row[0], row[1]) not in stored] if stored else rows
            if new:
                last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
                first = (int(last[0]) if last else 0) + 1
                # executemany instead of one execute per event: the whole batch in one statement's loop in C.
                conn.executemany(sql.INSERT, [(seq, *row) for seq, row in enumerate(new, start=first)])
                if self._search:
                    numbered = [(s, batch.first[(row[0], row[1])]) for s, row in enumerate(new, start=first)]
                    conn.executemany(search.INSERT, search.index_rows(numbered))
                ms = received_ms(received_at)
                self._buckets.record(
                    conn, [(hashes[(row[0], row[1])], seq, ms) for seq, row in enumerate(new, start=first)]
                )
            inserted = {(row[0], row[1]) for row in new}
            count_duplicates(batch, stored, inserted)
            result = batch.result
            rejected = rejected_in(messages)
            if rejected:
                letters = sql.dead_letters_not_kept_yet(conn, rejected)
                result.known_again(len(rejected) - len(letters))
                rejected = letters
            marked = receipt_rows(messages, receipts, batch, inserted)
            if marked:
                result.receipts = sql.record_receipts(conn, marked, received_at)
                if self._receipt_sweep.due():
                    conn.execute("DELETE FROM receipts WHERE committed_at < ?", (receipts_expired_before(),))
            conn.executemany(
                "UPDATE counters SET value = value + ? WHERE name = ?",
                [(delta, name) for name, delta in result.deltas()],
            )
            conn.executemany(sql.TOPICS, result.topic_deltas(Counter(topic for topic, _ in inserted)))
            conn.execute(sql.STATE, ("last_commit_at", received_at))
            if rejected:
                sql.keep_dead_letters(conn, rejected)
            if self._before_commit is not None:
                self._before_commit()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("rollback failed; the connection will discard the transaction", exc_info=True)
            raise
        # Committed: its notice to every api on this host, before the thread hands the batch back
        # (store/sqlite/notices.py): for batches someone may wait on, and every batch that stored an event.
        try:
            self._notices.committed([r[0] for r in marked], result.unique_processed, result.receipts)
        except Exception:  # a notice is a hint: the batch stays committed, whatever sending it did
            log.warning("commit notice not sent", exc_info=True)
        return len(new)

    def _known(
        self, conn: sqlite3.Connection, batch: Sorted
    ) -> tuple[dict[tuple[str, str], StoredCopy], dict[tuple[str, str], bytes]]:
        """The batch's keys already known, with the stored copy of those whose event has not expired, and
        every key's hash. A key older than KEY_RETENTION is forgotten: its event is stored again."""
        hashes = {key: key_hash(*key) for key in batch.first}
        found = self._buckets.find(conn, list(hashes.values()))
        stored: dict[tuple[str, str], StoredCopy] = {}
        if not found:
            return stored, hashes
        key_cutoff = self._retention.key_cutoff()
        forgotten = received_ms(key_cutoff) if key_cutoff else None
        event_cutoff = self._retention.event_cutoff()
        expired = received_ms(event_cutoff) if event_cutoff else None
        live: dict[int, tuple[str, str]] = {}
        for key, h in hashes.items():
            hit = found.get(h)
            if hit is None or (forgotten is not None and hit[1] < forgotten):
                continue
            stored[key] = None
            if expired is None or hit[1] >= expired:
                live[hit[0]] = key
        if live:
            for seq, copy in copies(conn, list(live)).items():
                stored[live[seq]] = copy
        return stored, hashes

    async def counters(self) -> dict[str, int]:
        rows = await self._conn.fetchall("SELECT name, value FROM counters")
        return {str(name): int(value) for name, value in rows}
