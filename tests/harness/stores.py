"""Both store backends behind one fixture shape, and a raw look into each for the store suite's checks."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg


@dataclass(frozen=True)
class StoreSettings:
    """What store.open_writer/open_reader read from the deployables' settings."""

    db_path: Path
    database_url: str | None = None


class Peek(Protocol):
    """Reads the store's tables directly, bypassing the product's reader."""

    # Where each backend keeps the per-topic counts and the consumer state (PostgreSQL stripes the counts
    # and the last commit time over writer slots, store/postgres/).
    counters_sql: str
    topic_counts_sql: str
    consumer_state_sql: str

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class SqlitePeek:
    counters_sql = "SELECT name, value FROM counters"
    topic_counts_sql = "SELECT topic, count FROM topics"
    consumer_state_sql = "SELECT key, value FROM consumer_state"

    def __init__(self, path: Path) -> None:
        self._path = path

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self._path)
        try:
            return [tuple(r) for r in conn.execute(sql.replace("$1", "?").replace("$2", "?"), args)]
        finally:
            conn.close()


class PostgresPeek:
    counters_sql = "SELECT name, SUM(value) FROM counter_slots GROUP BY name"
    topic_counts_sql = "SELECT topic, SUM(count) FROM topic_counts GROUP BY topic"
    consumer_state_sql = (
        "SELECT key, value FROM consumer_state UNION ALL SELECT 'last_commit_at', MAX(last_commit_at)"
        " FROM writer_slots HAVING MAX(last_commit_at) IS NOT NULL"
    )

    def __init__(self, url: str) -> None:
        self._url = url

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self._url)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()


async def counters(peek: Peek) -> dict[str, int]:
    """Each counter, summed over its rows (one on SQLite, one per writer slot on PostgreSQL)."""
    return {str(r[0]): int(r[1]) for r in await peek.rows(peek.counters_sql)}


async def stored_count(peek: Peek) -> int:
    return int((await peek.rows("SELECT COUNT(*) FROM events"))[0][0])


async def stored_keys(peek: Peek) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in await peek.rows("SELECT topic, event_id FROM events")}


async def stored_payload(peek: Peek, topic: str, event_id: str) -> str:
    rows = await peek.rows("SELECT payload FROM events WHERE topic = $1 AND event_id = $2", topic, event_id)
    return str(rows[0][0])


async def topic_counts(peek: Peek) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in await peek.rows(peek.topic_counts_sql)}


async def counted_per_topic(peek: Peek) -> dict[str, int]:
    return {
        str(r[0]): int(r[1]) for r in await peek.rows("SELECT topic, COUNT(*) FROM events GROUP BY topic")
    }


async def consumer_state(peek: Peek) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in await peek.rows(peek.consumer_state_sql)}
