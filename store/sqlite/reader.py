"""The SQLite reader: the api's read-only connection, pages, snapshots, receipts, dead letters."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import aiosqlite

from contract.schema import COUNTERS
from store.base import (
    COLUMNS,
    DEAD_LETTER_COLUMNS,
    NO_FILTERS,
    Backend,
    DeadLetterCounts,
    DeadLetterPage,
    Durability,
    Filters,
    Page,
    Row,
    Snapshot,
    dead_letter,
    empty_snapshot,
)
from store.sqlite.schema import BACKEND, error, open_reader, recorded

log = logging.getLogger(__name__)


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
                raise error(exc) from exc
            except sqlite3.Error as exc:
                raise error(exc) from exc
        state = {str(k): str(v) for k, v in consumer}
        values = {str(k): int(v) for k, v in counters}
        return Snapshot(
            {name: values.get(name, 0) for name in COUNTERS},
            {str(r[0]): int(r[1]) for r in topics},
            state,
            "ok",
            recorded(state),
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
