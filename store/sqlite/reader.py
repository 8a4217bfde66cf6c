"""The SQLite reader: the api's read-only connection, pages, snapshots, receipts, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from contract.schema import COUNTERS
from store.base import (
    COLUMNS,
    NO_FILTERS,
    Backend,
    Durability,
    Filters,
    Page,
    Row,
    Snapshot,
    empty_snapshot,
    key_hash,
)
from store.deadletters import DEAD_LETTER_COLUMNS, DeadLetterCounts, DeadLetterPage, dead_letter
from store.retention import Expired, Holdings, Retention, expires_at
from store.search import SearchOff
from store.sqlite import search
from store.sqlite.keys import NEWEST_SEQ, expired_bound, first_seq_at_or_after, key_of
from store.sqlite.schema import BACKEND, error, ms_text, open_reader, received_ms, recorded
from store.sqlite.search import search_query
from store.sqlite.thread import SqliteThread, on_thread

log = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteReader:
    """One read-only connection, opened when the store appears (the consumer creates it).

    Its queries run on the connection's own thread, one at a time (store/sqlite/thread.py).
    """

    backend: Backend = BACKEND

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: SqliteThread | None = None
        self._opening = asyncio.Lock()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _connection(self) -> SqliteThread | None:
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
            return await conn.fetchall(sql, params)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise error(exc) from exc
        except sqlite3.Error as exc:
            raise error(exc) from exc

    async def _read(self, fn: Callable[..., T], *args: Any) -> T | None:
        """`fn(conn, *args)` in one call on the connection's thread; None while the store or its tables do
        not exist yet (the consumer creates and migrates them)."""
        try:
            conn = await self._connection()
            if conn is None:
                return None
            return await on_thread(conn, fn, *args)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "no such column" in str(exc):
                return None
            raise error(exc) from exc
        except sqlite3.Error as exc:
            raise error(exc) from exc

    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        rows = await self._read(_page, topic, limit, after, descending, filters)
        rows = rows or []
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1][0] if more else None)

    async def event_row(self, topic: str, event_id: str) -> Row | Expired | None:
        return await self._read(_event_row, topic, event_id)

    async def snapshot(self) -> Snapshot:
        """Counters, per-topic counts and holdings in one read transaction, so they agree with each other."""
        found = await self._read(_snapshot, self._path)
        return empty_snapshot(BACKEND) if found is None else found

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


def _retention(conn: sqlite3.Connection) -> Retention:
    rows = conn.execute(
        "SELECT key, value FROM consumer_state WHERE key IN ('retention_seconds', 'key_retention_seconds')"
    ).fetchall()
    return Retention.from_state({str(k): str(v) for k, v in rows})


def _page(
    conn: sqlite3.Connection, topic: str | None, limit: int, after: int, descending: bool, filters: Filters
) -> list[Row]:
    if filters.search and not search.enabled(conn):
        raise SearchOff()
    bounds = _seq_bounds(conn, filters, _retention(conn).event_cutoff())
    if bounds is None:
        return []
    sql, params = page_query(topic, limit, after, descending, filters, bounds)
    return cast(list[Row], conn.execute(sql, params).fetchall())


def _seq_bounds(conn: sqlite3.Connection, filters: Filters, cutoff: str | None) -> tuple[int, int] | None:
    """The seqs a received_at range covers, expired events left out; None when it covers none."""
    low, high = 0, NEWEST_SEQ
    since = max(filters.since, cutoff) if filters.since and cutoff else (filters.since or cutoff)
    if since is not None:
        first = first_seq_at_or_after(conn, since)
        if first is None:
            return None
        low = first
    if filters.until is not None:
        beyond = first_seq_at_or_after(conn, filters.until)
        if beyond is not None:
            high = beyond - 1
    return (low, high) if low <= high else None


def _event_row(conn: sqlite3.Connection, topic: str, event_id: str) -> Row | Expired | None:
    # A seek per bucket on the keys' primary key (bucket, hash): `WHERE h = ?` alone scanned every key.
    key = key_of(conn, key_hash(topic, event_id))
    if key is None:
        return None
    seq, ms = key
    retention = _retention(conn)
    forgotten = retention.key_cutoff()
    if forgotten is not None and ms < received_ms(forgotten):
        return None
    row = conn.execute(f"SELECT {COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchone()
    cutoff = retention.event_cutoff()
    if row is not None and (row[1], row[2]) != (topic, event_id):
        return None  # another key with the same 128-bit hash: see key_hash
    if row is not None and (cutoff is None or str(row[6]) >= cutoff):
        return cast(Row, tuple(row))
    # From the key, not the row, so the answer is the same before and after the sweep (to the millisecond).
    received_at = ms_text(ms)
    return Expired(received_at, expires_at(received_at, retention))


def _snapshot(conn: sqlite3.Connection, path: Path) -> Snapshot:
    conn.execute("BEGIN")
    try:
        counters = conn.execute("SELECT name, value FROM counters").fetchall()
        swept = int(conn.execute("SELECT swept FROM sweep_totals").fetchone()[0])
        topics = conn.execute(
            "SELECT topic, count, duplicates, conflicts FROM topics ORDER BY first_seq, topic"
        ).fetchall()
        state = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM consumer_state")}
        retention = Retention.from_state(state)
        bound = expired_bound(conn, retention.event_cutoff())
        unswept = (
            conn.execute("SELECT COUNT(*) FROM events WHERE seq < ?", (bound,)).fetchone()[0] if bound else 0
        )
        oldest = conn.execute(
            "SELECT received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (bound,)
        ).fetchone()
    finally:
        conn.execute("COMMIT")
    values = {str(k): int(v) for k, v in counters}
    stored = values.get("unique_processed", 0) - swept - unswept
    holdings = Holdings(
        stored,
        values.get("unique_processed", 0) - stored,
        str(oldest[0]) if oldest else None,
        _size_on_disk(path),
        retention,
    )
    return Snapshot(
        {name: values.get(name, 0) for name in COUNTERS},
        {str(r[0]): int(r[1]) for r in topics},
        state,
        "ok",
        recorded(state),
        {str(r[0]): int(r[2]) for r in topics},
        {str(r[0]): int(r[3]) for r in topics},
        holdings,
    )


def _size_on_disk(path: Path) -> int:
    """The store's file and its WAL, in bytes (what a volume must hold)."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += part.stat().st_size
    return total


def page_query(
    topic: str | None, limit: int, after: int, descending: bool, filters: Filters, bounds: tuple[int, int]
) -> tuple[str, list[Any]]:
    """One page of events as SQL: keyset on seq, served by the primary key, events_by_topic or
    events_by_source (EXPLAIN QUERY PLAN in the store suite); the time range arrives as seq bounds."""
    # The cursor and the bounds as one range: given `seq > ?` and `seq BETWEEN ? AND ?`, SQLite seeks to
    # one of the two lower bounds only, and took BETWEEN's (0 without a time filter): a page from the
    # middle of 1,000,000 events then walked the 500,000 before it (70 ms, 1 ms as one range).
    low, high = bounds
    if descending:
        where = ["seq >= ?", "seq < ?"]
        params: list[Any] = [low, min(after, high + 1) if high < NEWEST_SEQ else after]
    else:
        where = ["seq > ?", "seq <= ?"]
        params = [max(after, low - 1), high]
    if topic is not None:
        where.append("topic = ?")
        params.append(topic)
    if filters.source is not None:
        # With a topic too, the topic's index leads and the source is checked on its rows: `+` keeps
        # SQLite from picking the source index and sorting (topics are usually the narrower).
        where.append("+source = ?" if topic is not None else "source = ?")
        params.append(filters.source)
    if filters.search:
        return search_query(COLUMNS, where, params, filters.search, descending, limit)
    order = "seq DESC" if descending else "seq"
    sql = f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
    return sql, [*params, limit + 1]
