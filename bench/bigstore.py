"""A store already holding many events, built fast: written directly with the product's schema module.

The store is created by the SQLite backend's own writer (its DDL, indexes and migrations); the rows go in
transactions of 50,000 rows with `synchronous=OFF` for the build only, then checkpointed. Events look like
the load generator's (8 topics, random UUID ids, a small payload) so the indexes have the shape real traffic
gives them, and the counters and per-topic counts agree with the rows, as the consumer would have left them.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from store import key_hash
from store.sqlite import SqliteWriter
from store.sqlite.keys import BUCKET_KEYS
from store.sqlite.schema import received_ms

TOPICS = ("orders", "payments", "auth", "search", "billing", "shipping", "inventory", "email")
CHUNK = 50_000
RECEIVED_AT = "2026-01-01T00:00:00.000000Z"


def _rows(
    count: int, seed: int, topics: Counter[str], search: bool = False
) -> Iterator[tuple[str, str, str, str, str, str]]:
    rng = random.Random(seed)
    for i in range(count):
        topic = f"demo.{TOPICS[rng.randrange(len(TOPICS))]}"
        topics[topic] += 1
        payload: dict[str, object] = {
            "seq": i,
            "level": "info",
            "message": f"stored event {i}",
            "latency_ms": rng.randrange(2000),
        }
        if search:  # a word and a field value in a tenth of the events, for the search scenario
            payload["status"] = "failed" if i % 10 == 0 else "ok"
        yield (
            topic,
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            f"loadgen-{rng.randrange(4)}",
            json.dumps(payload, separators=(",", ":")),
            RECEIVED_AT,
        )


def build(path: Path, count: int, seed: int = 1, tombstones: bool = False, search: bool = False) -> None:
    """Write `count` events into a new store at `path`; with `tombstones`, only their keys (the events
    expired and swept), as a store that has run for months under RETENTION holds them; with `search`,
    SEARCH on and the events indexed (as the consumer indexes a store when SEARCH is turned on)."""
    asyncio.run(_create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # the build only; the consumer reopens it with FULL
        conn.execute("PRAGMA cache_size = -262144")
        conn.create_function("eventagg_key", 2, key_hash, deterministic=True)
        topics: Counter[str] = Counter()
        rows = _rows(count, seed, topics, search)
        if tombstones:
            _tombstones(conn, rows, count)
        else:
            _events(conn, rows, count, topics)
    finally:
        conn.close()
    asyncio.run(_create(path, search))  # the writer builds the filters of the sealed key buckets
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _events(
    conn: sqlite3.Connection,
    rows: Iterator[tuple[str, str, str, str, str, str]],
    count: int,
    topics: Counter[str],
) -> None:
    seq = 0
    while True:
        chunk = [row for _, row in zip(range(CHUNK), rows, strict=False)]
        if not chunk:
            break
        numbered = [(seq + i, *row) for i, row in enumerate(chunk, start=1)]
        seq += len(chunk)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            numbered,
        )
        conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    # The keys in buckets by seq, each in hash order, as the migration does; the writer builds the
    # filters of the sealed buckets below, so that the consumer of every round finds them.
    conn.execute(
        f"INSERT INTO keys (bucket, h, seq, received_ms) SELECT seq / {BUCKET_KEYS},"
        " eventagg_key(topic, event_id), seq, ? FROM events ORDER BY 1, 2",
        (received_ms(RECEIVED_AT),),
    )
    _buckets(conn)
    for name in ("received", "unique_processed"):
        conn.execute("UPDATE counters SET value = ? WHERE name = ?", (count, name))
    conn.execute(
        "INSERT INTO topics (topic, count, first_seq) SELECT topic, COUNT(*), MIN(seq) FROM events"
        " WHERE true GROUP BY topic"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _buckets(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM key_buckets")
    conn.execute(
        "INSERT INTO key_buckets (bucket, keys, newest_ms) SELECT bucket, COUNT(*), MAX(received_ms)"
        " FROM keys GROUP BY bucket"
    )
    conn.execute(
        "INSERT INTO key_buckets (bucket, keys) SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM key_buckets)"
    )


def _tombstones(conn: sqlite3.Connection, rows: Iterator[tuple[str, ...]], count: int) -> None:
    """Only the keys, in hash order, and counters as if every event had been stored, then swept."""
    ms = received_ms(RECEIVED_AT)
    conn.execute("BEGIN IMMEDIATE")
    for start in range(0, count, BUCKET_KEYS):
        seqs = range(start + 1, min(count, start + BUCKET_KEYS) + 1)
        bucket = sorted((key_hash(row[0], row[1]), seq) for seq, row in zip(seqs, rows, strict=False))
        conn.executemany(
            "INSERT INTO keys (bucket, h, seq, received_ms) VALUES (?, ?, ?, ?)",
            [(seq // BUCKET_KEYS, h, seq, ms) for h, seq in bucket],
        )
    _buckets(conn)
    for name in ("received", "unique_processed"):
        conn.execute("UPDATE counters SET value = ? WHERE name = ?", (count, name))
    conn.execute("UPDATE sweep_totals SET swept = ?", (count,))
    # The events' seqs are gone with them, never to be handed out again.
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (count,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _create(path: Path, search: bool = False) -> None:
    writer = await SqliteWriter.open(path)
    try:
        if search:
            await writer.record_search(True)
    finally:
        await writer.close()


def stored(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()
