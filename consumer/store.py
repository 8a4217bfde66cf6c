"""The store writer: one SQLite transaction per batch holding the events, the dedup keys and the counters."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contract import schema
from contract.event import Event, content_hash

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchResult:
    received: int = 0
    unique_processed: int = 0
    duplicate_dropped: int = 0
    invalid: int = 0
    conflicts: int = 0

    def add(self, other: BatchResult) -> None:
        self.received += other.received
        self.unique_processed += other.unique_processed
        self.duplicate_dropped += other.duplicate_dropped
        self.invalid += other.invalid
        self.conflicts += other.conflicts


_INSERT = (
    "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, event_id) DO NOTHING"
)
_STORED = "SELECT timestamp, source, payload FROM events WHERE topic = ? AND event_id = ?"


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Store:
    """Owns the writer connection. Not thread-safe: the service calls it from one worker thread."""

    def __init__(self, conn: sqlite3.Connection, before_commit: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._before_commit = before_commit  # fault injection for the crash tests (consumer/faults.py)

    @classmethod
    def open(cls, path: Path, before_commit: Callable[[], None] | None = None) -> Store:
        return cls(schema.open_writer(path), before_commit)

    def close(self) -> None:
        self._conn.close()

    def record_start(self, started_at: str) -> None:
        mode = schema.durability(self._conn)
        self._write_state(
            {
                "started_at": started_at,
                "journal_mode": mode["journal_mode"],
                "synchronous": mode["synchronous"],
            }
        )

    def _write_state(self, values: dict[str, str]) -> None:
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO consumer_state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                values.items(),
            )

    def apply(self, messages: list[list[Event] | None]) -> BatchResult:
        """Apply a batch in ONE transaction. `None` stands for an invalid message (counted once).

        Raises sqlite3.Error with nothing applied; the caller must then ack nothing.
        """
        result = BatchResult()
        new_per_topic: Counter[str] = Counter()
        received_at = utc_now()
        with self._transaction() as cur:
            for events in messages:
                if events is None:
                    result.invalid += 1
                    result.received += 1
                    continue
                for item in events:
                    result.received += 1
                    cur.execute(
                        _INSERT,
                        (
                            item.topic,
                            item.event_id,
                            item.timestamp,
                            item.source,
                            item.payload_json(),
                            received_at,
                        ),
                    )
                    if cur.rowcount == 1:
                        result.unique_processed += 1
                        new_per_topic[item.topic] += 1
                        continue
                    result.duplicate_dropped += 1
                    if self._conflicts(cur, item):
                        result.conflicts += 1
            cur.executemany(
                "UPDATE counters SET value = value + ? WHERE name = ?",
                [(getattr(result, name), name) for name in schema.COUNTERS if getattr(result, name)],
            )
            cur.executemany(
                "INSERT INTO topics (topic, count) VALUES (?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count",
                new_per_topic.items(),
            )
            cur.execute(
                "INSERT INTO consumer_state (key, value) VALUES ('last_commit_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (received_at,),
            )
            if self._before_commit is not None:
                self._before_commit()
        return result

    @staticmethod
    def _conflicts(cur: sqlite3.Cursor, item: Event) -> bool:
        stored = cur.execute(_STORED, item.key()).fetchone()
        if stored is None:  # cannot happen inside the transaction that just hit the key; count it loudly
            return True
        if stored[0] == item.timestamp and stored[1] == item.source and stored[2] == item.payload_json():
            return False  # a verbatim re-send, the common duplicate: no need to hash
        return bool(content_hash(stored[0], stored[1], json.loads(stored[2])) != item.content_hash())

    def counters(self) -> dict[str, int]:
        return {name: int(value) for name, value in self._conn.execute("SELECT name, value FROM counters")}

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error so a failed batch leaves no trace."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Cursor:
        self._cur = self._conn.cursor()
        self._cur.execute("BEGIN IMMEDIATE")
        return self._cur

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            try:
                self._cur.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("rollback failed; the connection will discard the transaction", exc_info=True)
