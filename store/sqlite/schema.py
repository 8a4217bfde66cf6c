"""The SQLite store's schema: DDL and migrations by `PRAGMA user_version`, pragmas, the writer's lock."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from store.base import Durability, StoreConfigError, StoreError, key_hash
from store.clock import utc_text
from store.sqlite import search
from store.sqlite.keys import BUCKET_KEYS
from store.sqlite.thread import SqliteThread

log = logging.getLogger(__name__)

BACKEND: Final = "sqlite"

# `seq` orders events as they were stored and is the keyset cursor. The dedup key (topic, event_id) is
# unique (a UNIQUE constraint up to migration 6, the `keys` table since 7), checked inside the same
# transaction that stores the event and moves the counters, so a key can never be recorded without its
# effect. No content hash is stored: duplicates are the rare path, so
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
    # Retention. The dedup key leaves the events table for `keys`: 16 bytes of the key's hash, the event's
    # seq and its received_at in milliseconds, in buckets in the order keys arrive (store/sqlite/keys.py),
    # about 35 bytes a key where the UNIQUE index took 60-70. A key outlives its event (a tombstone), so a
    # re-send of an expired event is still a duplicate. Existing keys go into buckets by seq; the writer
    # builds the filters of the sealed ones when it first opens the store. `seq` becomes AUTOINCREMENT: once
    # the oldest events are swept (or all of them), a seq is never handed out twice, so cursors and the keys'
    # seqs never point at another event. `sweep_totals` counts the events swept.
    f"""
    CREATE TABLE events_v7 (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        topic        TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        timestamp    TEXT NOT NULL,
        source       TEXT NOT NULL,
        payload      TEXT NOT NULL,
        received_at  TEXT NOT NULL
    );
    INSERT INTO events_v7 (seq, topic, event_id, timestamp, source, payload, received_at)
    SELECT seq, topic, event_id, timestamp, source, payload, received_at FROM events ORDER BY seq;
    DROP TABLE events;
    ALTER TABLE events_v7 RENAME TO events;
    CREATE INDEX events_by_topic ON events (topic, seq);
    CREATE INDEX events_by_source ON events (source, seq);
    CREATE TABLE keys (
        bucket       INTEGER NOT NULL,
        h            BLOB NOT NULL,
        seq          INTEGER NOT NULL,
        received_ms  INTEGER NOT NULL,
        PRIMARY KEY (bucket, h)
    ) WITHOUT ROWID;
    INSERT INTO keys (bucket, h, seq, received_ms)
    SELECT seq / {BUCKET_KEYS}, eventagg_key(topic, event_id), seq, eventagg_ms(received_at) FROM events
    ORDER BY 1, 2;
    CREATE TABLE key_buckets (
        bucket     INTEGER PRIMARY KEY,
        keys       INTEGER NOT NULL,
        newest_ms  INTEGER,
        filter     BLOB
    );
    INSERT INTO key_buckets (bucket, keys, newest_ms)
    SELECT bucket, COUNT(*), MAX(received_ms) FROM keys GROUP BY bucket;
    INSERT INTO key_buckets (bucket, keys) SELECT 0, 0 WHERE NOT EXISTS (SELECT 1 FROM key_buckets);
    CREATE TABLE sweep_totals (swept INTEGER NOT NULL);
    INSERT INTO sweep_totals (swept) VALUES (0);
    """,
    # GET /events?q= and payload.<field>=: the FTS5 index of every stored event (store/sqlite/search.py).
    search.MIGRATION,
    # An invalid message is looked for among the dead letters kept (store/deadletters.py not_kept_yet): by
    # its message id too, whether one kept from a redelivery was claimed by its first delivery, and through
    # an index, not a scan of up to 100,000 bodies.
    """
    ALTER TABLE dead_letters ADD COLUMN message_id TEXT;
    ALTER TABLE dead_letters ADD COLUMN unclaimed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX dead_letters_by_size ON dead_letters (size, routing_key);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
WAL_AUTOCHECKPOINT_PAGES = 20_000


class SchemaError(StoreConfigError):
    """The store was written by a newer version of the product, or cannot be put in WAL mode."""


def error(exc: BaseException) -> StoreError:
    return StoreError(f"{type(exc).__name__}: {exc}")


def configure_writer(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA busy_timeout = 5000")
    row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    mode = row[0] if row else None
    if mode != "wal":
        raise SchemaError(f"could not switch DB_PATH={path} to WAL mode (got {mode!r})")
    # synchronous=FULL: a commit survives power loss before we ack.
    conn.execute("PRAGMA synchronous = FULL")
    # Checkpoint every 20,000 WAL pages (about 80 MB) rather than SQLite's 1,000. The dedup key's index is
    # keyed by random ids, so in a big store every insert dirties its own index page; a commit writes those
    # pages to the WAL and a checkpoint writes them again into the database file. Fewer, larger checkpoints
    # write a page that several commits touched once instead of once per commit: measured here with
    # 1,000,000 stored events, commits took about half the time.
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")


def received_ms(received_at: str) -> int:
    """`received_at` text (utc_text's format) as milliseconds since the epoch, as `keys` holds it."""
    return int(datetime.fromisoformat(received_at).timestamp() * 1000)


def ms_text(ms: int) -> str:
    return utc_text(datetime.fromtimestamp(ms / 1000, UTC))


def migrate(conn: sqlite3.Connection) -> None:
    # Migration 7 fills `keys` from the events with the same functions the writer uses.
    conn.create_function("eventagg_key", 2, key_hash, deterministic=True)
    conn.create_function("eventagg_ms", 1, received_ms, deterministic=True)
    search.register(conn)  # turning SEARCH on indexes the events already stored with them
    row = conn.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaError(f"store schema version {version} is newer than this program's {SCHEMA_VERSION}")
    for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits first, so the version bump goes in the same script, inside one transaction.
        conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {target}; COMMIT;")
        log.info("store migrated to schema version=%d", target)


def read_durability(conn: sqlite3.Connection) -> dict[str, str]:
    journal = conn.execute("PRAGMA journal_mode").fetchone()
    sync = conn.execute("PRAGMA synchronous").fetchone()
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


class WriterLock:
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


def recorded(state: dict[str, str]) -> Durability:
    # synchronous is a per-connection setting: only the writer knows its own, and records it at start.
    return durability_of({k: state[k] for k in ("journal_mode", "synchronous") if k in state})


async def open_reader(uri: str) -> SqliteThread:
    """A read-only connection to a file: URI; sqlite3.OperationalError if the store does not exist yet."""
    conn = await SqliteThread.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA query_only = 1")
    except BaseException:
        await conn.close()
        raise
    return conn
