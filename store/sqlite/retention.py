"""The SQLite store's sweeps: expired events and forgotten keys leave in short transactions.

Each transaction runs in one call on the writer's thread, so a batch queued meanwhile commits between two
of them. Events go from the front of the table (received_at grows with seq), a chunk sized to take about
SWEEP_TARGET; the pages they free go on SQLite's freelist and are reused by new events, so the file stops
growing once as much expires as arrives (it does not shrink: auto_vacuum is off, as it always was).
Forgotten keys (KEY_RETENTION) leave a whole key bucket at a time, once its newest key is older than the
cutoff (store/sqlite/buckets.py); dedup and reads treat a forgotten key as gone at once, so deleting it can
lag by up to a bucket's span.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from store.retention import Retention, SweepResult
from store.sqlite import search
from store.sqlite.buckets import KeyBuckets
from store.sqlite.keys import expired_bound
from store.sqlite.schema import received_ms

log = logging.getLogger(__name__)

# Each sweep transaction aims at this much time holding the writer (the bound is about 50 ms).
SWEEP_TARGET = 0.02
_FIRST_CHUNK = 1000
# The floor keeps a sweep ahead of arrivals on a slow machine, where a commit's fsync alone takes the target.
_MIN_CHUNK, _MAX_CHUNK = 500, 50_000

OnThread = Callable[..., Awaitable[Any]]
Hook = Callable[[], None] | None


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _sweep_events(
    conn: sqlite3.Connection, cutoff: str, limit: int, before_commit: Hook
) -> tuple[int, float]:
    """Delete up to `limit` of the oldest events received before `cutoff`; (removed, seconds)."""
    started = time.perf_counter()
    try:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT seq, received_at FROM events ORDER BY seq LIMIT 1 OFFSET ?", (limit,)
        ).fetchone()
        if row is not None and str(row[1]) < cutoff:
            upper = int(row[0])  # the whole chunk is expired
        else:
            bound = expired_bound(conn, cutoff)
            upper = bound if row is None else min(bound, int(row[0]))
        removed = conn.execute("DELETE FROM events WHERE seq < ?", (upper,)).rowcount if upper else 0
        if removed:
            search.sweep(conn, upper)
            conn.execute("UPDATE sweep_totals SET swept = swept + ?", (removed,))
            if before_commit is not None:
                before_commit()
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return removed, time.perf_counter() - started


def _next_chunk(limit: int, removed: int, took: float) -> int:
    if removed < limit or took <= 0:
        return limit
    return max(_MIN_CHUNK, min(_MAX_CHUNK, int(limit * SWEEP_TARGET / took)))


async def sweep(
    conn: Any, on_thread: OnThread, retention: Retention, buckets: KeyBuckets, before_commit: Hook = None
) -> SweepResult:
    """One sweep by `retention` (the store's); each transaction one call on the connection's thread."""
    if retention.events is None and retention.keys is None:
        return SweepResult(skipped="RETENTION is not set: every event is kept")
    events = keys = transactions = 0
    longest = 0.0
    cutoff = retention.event_cutoff()
    if cutoff is not None:
        limit = _FIRST_CHUNK
        while True:
            removed, took = await on_thread(conn, _sweep_events, cutoff, limit, before_commit)
            events, transactions, longest = events + removed, transactions + 1, max(longest, took)
            if removed < limit:
                break
            limit = _next_chunk(limit, removed, took)
    key_cutoff = retention.key_cutoff()
    if key_cutoff is not None:
        forgotten_ms = received_ms(key_cutoff)
        more = True
        while more:
            started = time.perf_counter()
            removed, more = await on_thread(conn, buckets.forget_one, forgotten_ms, before_commit)
            took = time.perf_counter() - started
            keys, transactions, longest = keys + removed, transactions + int(more), max(longest, took)
    return SweepResult(events, keys, transactions, longest)
