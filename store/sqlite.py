"""The SQLite backend through aiosqlite: DDL, migrations by `PRAGMA user_version`, pragmas, writer, reader."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, cast

import aiosqlite

from contract.schema import COUNTERS
from store.base import (
    COLUMNS,
    DEAD_LETTER_COLUMNS,
    DEAD_LETTERS_KEPT,
    NO_FILTERS,
    Backend,
    BatchResult,
    DeadLetterCounts,
    DeadLetterPage,
    Durability,
    Filters,
    Message,
    Page,
    Rejected,
    Row,
    Snapshot,
    Sorted,
    StoreConfigError,
    StoreError,
    count_duplicates,
    dead_letter,
    empty_snapshot,
    receipt_rows,
    receipts_expired_before,
    rejected_in,
    sort_batch,
    utc_now,
)

log = logging.getLogger(__name__)

BACKEND: Final = "sqlite"

# `seq` orders events as they were stored and is the keyset cursor. The dedup key (topic, event_id) is a
# UNIQUE constraint, checked inside the same transaction that stores the event and moves the counters, so a
# key can never be recorded without its effect. No content hash is stored: duplicates are the rare path, so
# the conflict check recomputes it from the stored row only when a key repeats.
# Migration 1 is the first release's schema verbatim: stores it wrote open unchanged and are migrated on.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq          INTEGER PRIMARY KEY,
        topic        TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        timestamp    TEXT NOT NULL,
        source       TEXT NOT NULL,
        payload      TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        UNIQUE (topic, event_id)
    );
    CREATE INDEX events_by_topic ON events (topic, seq);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO counters (name, value) VALUES
        ('received', 0), ('unique_processed', 0), ('duplicate_dropped', 0), ('invalid', 0), ('conflicts', 0);
    CREATE TABLE topics (topic TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE consumer_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
    # /stats lists topics in the order they were first stored: the seq of each topic's first event.
    """
    ALTER TABLE topics ADD COLUMN first_seq INTEGER;
    UPDATE topics SET first_seq = (SELECT MIN(seq) FROM events WHERE events.topic = topics.topic);
    """,
    # POST /publish?wait=stored: which marked messages are committed, and how many of their events each
    # stored (store/base.py receipt_rows); kept an hour.
    """
    CREATE TABLE receipts (
        receipt TEXT PRIMARY KEY, new INTEGER NOT NULL, duplicates INTEGER NOT NULL,
        committed_at TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX receipts_by_time ON receipts (committed_at);
    """,
    # Dead letters, written in the transaction that counts them invalid; `id` orders them (newest first).
    """
    CREATE TABLE dead_letters (
        id           INTEGER PRIMARY KEY,
        at           TEXT NOT NULL,
        kind         TEXT NOT NULL,
        reason       TEXT NOT NULL,
        routing_key  TEXT NOT NULL,
        body         BLOB NOT NULL,
        size         INTEGER NOT NULL,
        truncated    INTEGER NOT NULL
    );
    CREATE TABLE dead_letter_counts (kind TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE dead_letter_totals (dropped INTEGER NOT NULL);
    INSERT INTO dead_letter_totals (dropped) VALUES (0);
    """,
    # GET /events by source. By received_at needs no index of its own: the writer keeps received_at
    # non-decreasing in seq, so a time bound is a binary search on the primary key (see SqliteReader).
    """
    CREATE INDEX events_by_source ON events (source, seq);
    """,
    # Duplicates and conflicts per topic, moved in the batch's transaction like the global counters (from
    # this version on: a store migrated to it starts them at 0).
    """
    ALTER TABLE topics ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE topics ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
WAL_AUTOCHECKPOINT_PAGES = 20_000
# Keys per existence query: two bound parameters each, far below SQLite's 32,766-parameter limit.
_KEYS_PER_QUERY = 500

_INSERT = (
    "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, event_id) DO NOTHING"
)
_TOPICS = (
    "INSERT INTO topics (topic, count, first_seq, duplicates, conflicts)"
    " VALUES (?1, ?2, (SELECT MIN(seq) FROM events WHERE topic = ?1), ?3, ?4)"
    " ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count,"
    " duplicates = duplicates + excluded.duplicates, conflicts = conflicts + excluded.conflicts"
)
_STATE = (
    "INSERT INTO consumer_state (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_DEAD_LETTER = (
    "INSERT INTO dead_letters (at, kind, reason, routing_key, body, size, truncated)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DEAD_LETTER_COUNT = (
    "INSERT INTO dead_letter_counts (kind, count) VALUES (?, ?)"
    " ON CONFLICT (kind) DO UPDATE SET count = count + excluded.count"
)
# Everything older than the newest DEAD_LETTERS_KEPT; a walk down the primary key, only in a batch that
# rejected something.
_DEAD_LETTER_TRIM = (
    "DELETE FROM dead_letters WHERE id < (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


class SchemaError(StoreConfigError):
    """The store was written by a newer version of the product, or cannot be put in WAL mode."""


def _existing_query(count: int) -> str:
    # A join with a VALUES list searches the UNIQUE index once per key; `(topic, event_id) IN (VALUES ...)`
    # would scan the whole table (EXPLAIN QUERY PLAN, SQLite 3.40).
    values = ",".join(["(?,?)"] * count)
    return (
        "SELECT e.topic, e.event_id, e.timestamp, e.source, e.payload FROM events e"
        f" JOIN (VALUES {values}) k ON e.topic = k.column1 AND e.event_id = k.column2"
    )


async def _on_thread(conn: aiosqlite.Connection, fn: Callable[..., None], *args: Any) -> None:
    """Run `fn(*args)` on the connection's own thread, after whatever is queued there."""
    await cast(Any, conn)._execute(fn, *args)


def _keep_dead_letters(conn: sqlite3.Connection, rejected: list[Rejected]) -> None:
    rows = []
    for item in rejected:
        body, truncated = item.stored_body()
        size = len(item.body)
        rows.append((item.at, item.kind, item.reason, item.routing_key, body, size, int(truncated)))
    conn.executemany(_DEAD_LETTER, rows)
    conn.executemany(_DEAD_LETTER_COUNT, Counter(item.kind for item in rejected).items())
    dropped = conn.execute(_DEAD_LETTER_TRIM, (DEAD_LETTERS_KEPT - 1,)).rowcount
    if dropped > 0:
        conn.execute("UPDATE dead_letter_totals SET dropped = dropped + ?", (dropped,))


def _error(exc: BaseException) -> StoreError:
    return StoreError(f"{type(exc).__name__}: {exc}")


async def _configure_writer(conn: aiosqlite.Connection, path: Path) -> None:
    await conn.execute("PRAGMA busy_timeout = 5000")
    async with conn.execute("PRAGMA journal_mode = WAL") as cur:
        row = await cur.fetchone()
    mode = row[0] if row else None
    if mode != "wal":
        raise SchemaError(f"could not switch DB_PATH={path} to WAL mode (got {mode!r})")
    # synchronous=FULL: a commit survives power loss before we ack.
    await conn.execute("PRAGMA synchronous = FULL")
    # Checkpoint every 20,000 WAL pages (about 80 MB) rather than SQLite's 1,000. The dedup key's index is
    # keyed by random ids, so in a big store every insert dirties its own index page; a commit writes those
    # pages to the WAL and a checkpoint writes them again into the database file. Fewer, larger checkpoints
    # write a page that several commits touched once instead of once per commit: measured here with
    # 1,000,000 stored events, commits took about half the time.
    await conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")


async def migrate(conn: aiosqlite.Connection) -> None:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaError(f"store schema version {version} is newer than this program's {SCHEMA_VERSION}")
    for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits first, so the version bump goes in the same script, inside one transaction.
        await conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {target}; COMMIT;")
        log.info("store migrated to schema version=%d", target)


async def _durability(conn: aiosqlite.Connection) -> dict[str, str]:
    async with conn.execute("PRAGMA journal_mode") as cur:
        journal = await cur.fetchone()
    async with conn.execute("PRAGMA synchronous") as cur:
        sync = await cur.fetchone()
    synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(sync[0]) if sync else -1, "unknown")
    return {"journal_mode": str(journal[0]) if journal else "unknown", "synchronous": synchronous}


def durability_of(settings: dict[str, str]) -> Durability:
    if not settings:
        return Durability(BACKEND, None)
    durable = settings.get("journal_mode") == "wal" and settings.get("synchronous") in ("FULL", "EXTRA")
    warning = None
    if not durable:
        warning = (
            f"the writer runs journal_mode={settings.get('journal_mode')} "
            f"synchronous={settings.get('synchronous')}: a commit may be lost on power failure"
        )
    return Durability(BACKEND, durable, settings, warning)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class _WriterLock:
    """An flock on a file beside the store, held for the writer's life: SQLite has one writer."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreConfigError(
                f"another consumer is already writing DB_PATH={path} (it holds {lock_path(path)}); SQLite "
                "takes one consumer: stop the other one, or set DATABASE_URL=postgresql://... for several"
            ) from None

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the flock


class SqliteWriter:
    """The consumer's connection; aiosqlite runs it on its own thread so the fsync never blocks the loop."""

    backend: Backend = BACKEND

    def __init__(
        self, conn: aiosqlite.Connection, lock: _WriterLock, before_commit: Callable[[], None] | None
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._before_commit = before_commit  # fault injection for the crash tests (consumer/faults.py)
        self._last_received_at = ""

    @classmethod
    async def open(cls, path: Path, before_commit: Callable[[], None] | None = None) -> SqliteWriter:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = _WriterLock(path)
        except OSError as exc:
            raise _error(exc) from exc
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a batch is exactly one transaction.
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            lock.release()
            raise _error(exc) from exc
        try:
            await _configure_writer(conn, path)
            await migrate(conn)
        except BaseException as exc:
            await conn.close()
            lock.release()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise _error(exc) from exc
            raise
        writer = cls(conn, lock, before_commit)
        try:
            async with conn.execute("SELECT MAX(received_at) FROM events") as cur:
                row = await cur.fetchone()
        except (sqlite3.Error, OSError) as exc:
            await writer.close()
            raise _error(exc) from exc
        writer._last_received_at = str(row[0]) if row and row[0] else ""
        return writer

    async def close(self) -> None:
        try:
            await self._conn.close()
        finally:
            self._lock.release()

    async def durability(self) -> Durability:
        return durability_of(await _durability(self._conn))

    async def record_start(self, started_at: str) -> None:
        try:
            mode = await _durability(self._conn)
            await self._conn.execute("BEGIN IMMEDIATE")
            await self._conn.executemany(_STATE, [("started_at", started_at), *mode.items()])
            await self._conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            await self._rollback()
            raise _error(exc) from exc
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
            # The whole transaction in one call on aiosqlite's thread, through the private `_execute` its own
            # methods use: each `await conn.execute` is a round trip between threads, and a batch took ~10.
            # One hop saved about 10% of the apply's CPU and wall time per event (bench/README.md).
            await _on_thread(self._conn, self._write, batch, rows, messages, receipts, received_at)
        except (sqlite3.Error, OSError) as exc:
            raise _error(exc) from exc
        self._last_received_at = received_at
        return batch.result

    def _write(
        self,
        batch: Sorted,
        rows: list[tuple[str, str, str, str, str, str]],
        messages: Sequence[Message],
        receipts: Sequence[str | None] | None,
        received_at: str,
    ) -> None:
        """The batch's transaction, run on the connection's thread; rolled back on any error."""
        conn = self._conn._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            stored: dict[tuple[str, str], tuple[str, str, str]] = {}
            keys = list(batch.first)
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[start : start + _KEYS_PER_QUERY]
                params = [part for key in chunk for part in key]
                for topic, event_id, timestamp, source, payload in conn.execute(
                    _existing_query(len(chunk)), params
                ):
                    stored[(topic, event_id)] = (timestamp, source, payload)
            new = [row for row in rows if (row[0], row[1]) not in stored] if stored else rows
            # executemany instead of one execute per event: the whole batch in one statement's loop in C.
            added = conn.executemany(_INSERT, new).rowcount if new else 0
            if added != len(new):  # only this writer writes (the lock file): cannot happen
                raise StoreError(f"inserted {added} of {len(new)} new events; store changed under us")
            inserted = {(row[0], row[1]) for row in new}
            count_duplicates(batch, stored, inserted)
            result = batch.result
            marked = receipt_rows(messages, receipts, batch, inserted)
            if marked:
                conn.executemany(
                    "INSERT INTO receipts (receipt, new, duplicates, committed_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (receipt) DO NOTHING",
                    [(*row, received_at) for row in marked],
                )
                conn.execute("DELETE FROM receipts WHERE committed_at < ?", (receipts_expired_before(),))
            conn.executemany(
                "UPDATE counters SET value = value + ? WHERE name = ?",
                [(delta, name) for name, delta in result.deltas()],
            )
            conn.executemany(_TOPICS, result.topic_deltas(Counter(topic for topic, _ in inserted)))
            conn.execute(_STATE, ("last_commit_at", received_at))
            rejected = rejected_in(messages)
            if rejected:
                _keep_dead_letters(conn, rejected)
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

    async def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                await self._conn.execute("ROLLBACK")
            except (sqlite3.Error, ValueError):
                log.warning("rollback failed; the connection will discard the transaction", exc_info=True)

    async def counters(self) -> dict[str, int]:
        async with self._conn.execute("SELECT name, value FROM counters") as cur:
            return {str(name): int(value) for name, value in await cur.fetchall()}


class SqliteReader:
    """One read-only connection, opened when the store appears (the consumer creates it).

    aiosqlite runs its queries on the connection's own thread, one at a time, as the old lock did.
    """

    backend: Backend = BACKEND

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()
        self._snapshot_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _connection(self) -> aiosqlite.Connection | None:
        if self._conn is None:
            async with self._opening:
                if self._conn is None:
                    if not self._path.exists():
                        return None
                    self._conn = await open_reader(self._path.resolve().as_uri())
        return self._conn

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any] | None:
        """Rows, or None while the store or its tables do not exist yet."""
        try:
            conn = await self._connection()
            if conn is None:
                return None
            async with conn.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise _error(exc) from exc
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        bounds = await self._seq_bounds(filters)
        if bounds is None:
            return Page([], None)
        sql, params = page_query(topic, limit, after, descending, filters, bounds)
        rows = await self._query(sql, params)
        rows = rows or []
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(cast(list[Row], rows), rows[-1][0] if more else None)

    async def _seq_bounds(self, filters: Filters) -> tuple[int, int] | None:
        """The seqs a received_at range covers; None when it covers none."""
        low, high = 0, NEWEST_SEQ
        if filters.since is not None:
            first = await self._first_seq_at_or_after(filters.since)
            if first is None:
                return None
            low = first
        if filters.until is not None:
            beyond = await self._first_seq_at_or_after(filters.until)
            if beyond is not None:
                high = beyond - 1
        return (low, high) if low <= high else None

    async def _first_seq_at_or_after(self, moment: str) -> int | None:
        """The first seq stored at or after `moment`, by binary search on the primary key.

        The writer keeps received_at non-decreasing as seq grows, so this costs about 20 primary-key seeks
        at 1,000,000 events, where an index on received_at would add a B-tree write to every insert.
        """
        ends = await self._query(_SEQ_ENDS)
        if not ends or ends[0][0] is None:
            return None
        low, high = int(ends[0][0]), int(ends[0][1])
        found = None
        while low <= high:
            middle = (low + high) // 2
            rows = await self._query(_SEQ_PROBE, (middle,))
            if not rows or int(rows[0][0]) > high:  # no row between middle and high
                high = middle - 1
                continue
            seq, received_at = int(rows[0][0]), str(rows[0][1])
            if received_at >= moment:
                found, high = seq, middle - 1
            else:
                low = seq + 1
        return found

    async def event_row(self, topic: str, event_id: str) -> Row | None:
        rows = await self._query(
            f"SELECT {COLUMNS} FROM events WHERE topic = ? AND event_id = ?", (topic, event_id)
        )
        return cast(Row, tuple(rows[0])) if rows else None

    async def snapshot(self) -> Snapshot:
        """Counters and per-topic counts in one read transaction, so they agree with each other."""
        async with self._snapshot_lock:
            try:
                conn = await self._connection()
                if conn is None:
                    return empty_snapshot(BACKEND)
                await conn.execute("BEGIN")
                try:
                    counters = await conn.execute_fetchall("SELECT name, value FROM counters")
                    topics = await conn.execute_fetchall(
                        "SELECT topic, count, duplicates, conflicts FROM topics ORDER BY first_seq, topic"
                    )
                    consumer = await conn.execute_fetchall("SELECT key, value FROM consumer_state")
                finally:
                    await conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) or "no such column" in str(exc):
                    return empty_snapshot(BACKEND)
                raise _error(exc) from exc
            except sqlite3.Error as exc:
                raise _error(exc) from exc
        state = {str(k): str(v) for k, v in consumer}
        values = {str(k): int(v) for k, v in counters}
        return Snapshot(
            {name: values.get(name, 0) for name in COUNTERS},
            {str(r[0]): int(r[1]) for r in topics},
            state,
            "ok",
            _recorded(state),
            {str(r[0]): int(r[2]) for r in topics},
            {str(r[0]): int(r[3]) for r in topics},
        )

    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._query(
            f"SELECT receipt, new, duplicates FROM receipts WHERE receipt IN ({marks})", list(ids)
        )
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows or []}

    async def check(self) -> str:
        rows = await self._query("SELECT value FROM counters LIMIT 1")
        return "missing" if rows is None else "ok"

    async def durability(self) -> Durability:
        return (await self.snapshot()).durability

    async def dead_letters(self, limit: int, before: int | None) -> DeadLetterPage:
        where, params = ("WHERE id < ?", [before]) if before is not None else ("", [])
        rows = await self._query(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id DESC LIMIT ?",
            (*params, limit + 1),
        )
        letters = [dead_letter(row) for row in rows or []]
        more = len(letters) > limit
        letters = letters[:limit]
        return DeadLetterPage(letters, letters[-1].id if more else None)

    async def dead_letter_counts(self) -> DeadLetterCounts:
        counts = await self._query("SELECT kind, count FROM dead_letter_counts ORDER BY kind")
        dropped = await self._query("SELECT dropped FROM dead_letter_totals")
        by_kind = {str(k): int(n) for k, n in counts or []}
        gone = int(dropped[0][0]) if dropped else 0
        return DeadLetterCounts(by_kind, sum(by_kind.values()) - gone, gone)


NEWEST_SEQ = 2**63 - 1


# The two statements of the binary search over received_at; each a seek on the primary key.
# (MIN and MAX in one SELECT would scan the table; each in its own subquery is one seek.)
_SEQ_ENDS = "SELECT (SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events)"
_SEQ_PROBE = "SELECT seq, received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1"


def page_query(
    topic: str | None, limit: int, after: int, descending: bool, filters: Filters, bounds: tuple[int, int]
) -> tuple[str, list[Any]]:
    """One page of events as SQL: keyset on seq, served by the primary key, events_by_topic or
    events_by_source (EXPLAIN QUERY PLAN in the store suite); the time range arrives as seq bounds."""
    where = ["seq < ?" if descending else "seq > ?", "seq BETWEEN ? AND ?"]
    params: list[Any] = [after, *bounds]
    if topic is not None:
        where.append("topic = ?")
        params.append(topic)
    if filters.source is not None:
        # With a topic too, the topic's index leads and the source is checked on its rows: `+` keeps
        # SQLite from picking the source index and sorting (topics are usually the narrower).
        where.append("+source = ?" if topic is not None else "source = ?")
        params.append(filters.source)
    order = "seq DESC" if descending else "seq"
    sql = f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    return sql, [*params, limit + 1]


def _recorded(state: dict[str, str]) -> Durability:
    # synchronous is a per-connection setting: only the writer knows its own, and records it at start.
    return durability_of({k: state[k] for k in ("journal_mode", "synchronous") if k in state})


async def open_reader(uri: str) -> aiosqlite.Connection:
    """A read-only connection to a file: URI; sqlite3.OperationalError if the store does not exist yet."""
    conn = await aiosqlite.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA query_only = 1")
    except BaseException:
        await conn.close()
        raise
    return conn
