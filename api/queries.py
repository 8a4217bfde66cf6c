"""Read-only queries on the store: events by keyset page, one event, counters, consumer state."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from contract import schema

log = logging.getLogger(__name__)


class BadCursor(ValueError):
    pass


# The largest SQLite integer: a descending page with no cursor starts below it, i.e. at the newest event.
NEWEST = 2**63 - 1


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, seq = raw.partition(":")
        if version != "v1":
            raise ValueError(version)
        value = int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"not a cursor from this api: {cursor!r}") from None
    if not 0 <= value < 2**63:  # SQLite integers are 64-bit signed
        raise BadCursor(f"not a cursor from this api: {cursor!r}")
    return value


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[tuple[Any, ...]]
    next_cursor: str | None

    @property
    def events(self) -> list[dict[str, Any]]:
        return [_row(r) for r in self.rows]

    def json(self) -> bytes:
        """The page as the JSON array GET /events answers."""
        return ("[" + ",".join(row_json(r) for r in self.rows) + "]").encode()


@dataclass(frozen=True, slots=True)
class Snapshot:
    counters: dict[str, int]
    topic_counts: dict[str, int]
    consumer: dict[str, str]
    store: str  # "ok" | "missing"


_COLUMNS = "seq, topic, event_id, timestamp, source, payload, received_at"


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "topic": row[1],
        "event_id": row[2],
        "timestamp": row[3],
        "source": row[4],
        "payload": json.loads(row[5]),
        "received_at": row[6],
    }


def row_json(row: tuple[Any, ...]) -> str:
    """One stored event as JSON text, its payload spliced in as stored.

    The payload column already holds compact JSON that the consumer serialised; parsing it and serialising
    it again (and validating a response model around it) was most of the cost of a page of events.
    `encode_basestring` is the json module's C string encoder, the same escaping as `ensure_ascii=False`.
    """
    e = encode_basestring
    return (
        f'{{"topic":{e(row[1])},"event_id":{e(row[2])},"timestamp":{e(row[3])},"source":{e(row[4])},'
        f'"payload":{row[5]},"received_at":{e(row[6])}}}'
    )


def consumer_state(db_path: Path) -> dict[str, Any]:
    """The consumer's own report (consumer/status.py), or {} when there is none or it is unreadable."""
    try:
        data = json.loads(schema.consumer_status_path(db_path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StoreReader:
    """One read-only connection, opened when the store appears (the consumer creates it), shared under a lock.

    Queries run in worker threads; the lock serialises them on the one connection, which is cheap next to
    opening a connection per request.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None:
            if not self._path.exists():
                return None
            self._conn = schema.open_reader(self._path)
        return self._conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
        """Rows, or None while the store or its tables do not exist yet."""
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None
                raise

    def page(self, topic: str | None, limit: int, after: int, descending: bool = False) -> Page:
        """Events after the cursor's seq in store order, or before it newest first (`descending`)."""
        where = "seq < ?" if descending else "seq > ?"
        params: list[Any] = [after]
        if topic is not None:
            where += " AND topic = ?"
            params.append(topic)
        order = "seq DESC" if descending else "seq"
        rows = self._query(
            f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT ?", (*params, limit + 1)
        )
        rows = rows or []
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, encode_cursor(rows[-1][0]) if more else None)

    def event(self, topic: str, event_id: str) -> dict[str, Any] | None:
        row = self.event_row(topic, event_id)
        return None if row is None else _row(row)

    def event_row(self, topic: str, event_id: str) -> tuple[Any, ...] | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM events WHERE topic = ? AND event_id = ?", (topic, event_id)
        )
        return rows[0] if rows else None

    def snapshot(self) -> Snapshot:
        """Counters and per-topic counts in one read transaction, so they agree with each other."""
        with self._lock:
            conn = self._connection()
            empty = Snapshot(dict.fromkeys(schema.COUNTERS, 0), {}, {}, "missing")
            if conn is None:
                return empty
            try:
                conn.execute("BEGIN")
                try:
                    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
                    topics = dict(conn.execute("SELECT topic, count FROM topics ORDER BY topic").fetchall())
                    consumer = dict(conn.execute("SELECT key, value FROM consumer_state").fetchall())
                finally:
                    conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return empty
                raise
        return Snapshot(
            {name: int(counters.get(name, 0)) for name in schema.COUNTERS}, topics, consumer, "ok"
        )

    def check(self) -> str:
        """'ok', 'missing' (not created yet), or raises sqlite3.Error when the store cannot be read."""
        rows = self._query("SELECT value FROM counters LIMIT 1")
        return "missing" if rows is None else "ok"
