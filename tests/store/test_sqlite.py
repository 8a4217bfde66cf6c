"""The SQLite backend alone: file layout, pragmas, migrations from the first release, one writer per file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contract import status
from contract.event import Event
from contract.schema import COUNTERS
from store import BatchResult, StoreConfigError, StoreError, key_hash, open_reader
from store.sqlite import SCHEMA_VERSION, SchemaError, SqliteWriter, lock_path
from tests.harness.stores import StoreSettings
from tests.harness.waiting import eventually
from tests.store.test_writer import event

REPO = Path(__file__).resolve().parents[2]

# The schema of the first release (user_version 1), verbatim: stores it wrote must keep working.
FIRST_RELEASE_DDL = """
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
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "events.db"


@pytest.fixture
async def writer(path: Path) -> AsyncIterator[SqliteWriter]:
    opened = await SqliteWriter.open(path)
    try:
        yield opened
    finally:
        await opened.close()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_opening_creates_the_store_its_directory_and_its_tables(
    path: Path, writer: SqliteWriter
) -> None:
    conn = raw(path)
    try:
        assert table_names(conn) == {
            "events",
            "counters",
            "topics",
            "consumer_state",
            "receipts",
            "dead_letters",
            "dead_letter_counts",
            "dead_letter_totals",
            "keys",
            "key_buckets",
            "sqlite_sequence",
            "sweep_totals",
            # the search index (FTS5) and its shadow tables
            "events_search",
            "events_search_data",
            "events_search_idx",
            "events_search_content",
            "events_search_config",
        }
        assert dict(conn.execute("SELECT name, value FROM counters").fetchall()) == dict.fromkeys(COUNTERS, 0)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_the_writer_runs_wal_and_synchronous_full(writer: SqliteWriter) -> None:
    durability = await writer.durability()

    assert (durability.backend, durability.durable) == ("sqlite", True)
    assert durability.settings == {"journal_mode": "wal", "synchronous": "FULL"}


async def test_reopening_is_a_no_op_migration_that_keeps_the_data(path: Path) -> None:
    first = await SqliteWriter.open(path)
    await first.apply([[event("a")]])
    await first.close()

    again = await SqliteWriter.open(path)
    try:
        assert (await again.counters())["unique_processed"] == 1
    finally:
        await again.close()
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


async def test_a_store_from_a_newer_version_is_refused_in_one_line(path: Path) -> None:
    path.parent.mkdir(parents=True)
    newer = raw(path)
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()

    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1} is newer") as caught:
        await SqliteWriter.open(path)
    assert isinstance(caught.value, StoreConfigError)
    assert "\n" not in str(caught.value)


async def test_the_event_key_is_unique_in_its_bucket_in_the_schema(path: Path, writer: SqliteWriter) -> None:
    # Across buckets the writer's lookup keeps it unique: tests/store/test_key_buckets.py.
    conn = raw(path)
    row = (0, key_hash("t", "e"), 1, 0)
    insert = "INSERT INTO keys (bucket, h, seq, received_ms) VALUES (?, ?, ?, ?)"
    try:
        conn.execute(insert, row)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert, row)
    finally:
        conn.close()


def first_release_store(path: Path) -> None:
    """A store as the first release left it: its DDL, rows written as its Store.apply wrote them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = raw(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(f"BEGIN IMMEDIATE; {FIRST_RELEASE_DDL}; PRAGMA user_version = 1; COMMIT;")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("zeta", "1", "2026-01-01T00:00:00Z", "old", '{"n":1}', "2026-01-01T00:00:01Z"),
                ("auth", "1", "2026-01-01T00:00:00Z", "old", '{"n":2}', "2026-01-01T00:00:01Z"),
                ("zeta", "2", "2026-01-01T00:00:00Z", "old", '{"n":3}', "2026-01-01T00:00:01Z"),
            ],
        )
        conn.executemany(
            "UPDATE counters SET value = ? WHERE name = ?",
            [(4, "received"), (3, "unique_processed"), (1, "duplicate_dropped")],
        )
        conn.executemany("INSERT INTO topics (topic, count) VALUES (?, ?)", [("auth", 1), ("zeta", 2)])
        conn.executemany(
            "INSERT INTO consumer_state (key, value) VALUES (?, ?)",
            [("started_at", "2026-01-01T00:00:00Z"), ("last_commit_at", "2026-01-01T00:00:01Z")],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_store_written_by_the_first_release_is_migrated_and_keeps_working(path: Path) -> None:
    first_release_store(path)

    writer = await SqliteWriter.open(path)
    try:
        result = await writer.apply([[event("2", topic="zeta", n=3), event("new", topic="billing")]])
        assert result == BatchResult(received=2, unique_processed=1, duplicate_dropped=1, conflicts=1)
    finally:
        await writer.close()

    reader = open_reader(StoreSettings(path))
    try:
        snap = await reader.snapshot()
        page = await reader.page(None, 10, 0)
    finally:
        await reader.close()
    assert snap.counters == {
        "received": 6,
        "unique_processed": 4,
        "duplicate_dropped": 2,
        "invalid": 0,
        "conflicts": 1,
    }
    # First-seen order, recovered from the stored events' seqs for the topics the first release knew.
    assert list(snap.topic_counts.items()) == [("zeta", 2), ("auth", 1), ("billing", 1)]
    assert [(row[1], row[2]) for row in page.rows] == [
        ("zeta", "1"),
        ("auth", "1"),
        ("zeta", "2"),
        ("billing", "new"),
    ]
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO topics (topic, count) VALUES ('t', 1)",
        "UPDATE counters SET value = 1 WHERE name = 'received'",
        "CREATE TABLE intruder (x INTEGER)",
    ],
)
async def test_the_reader_cannot_write(path: Path, writer: SqliteWriter, statement: str) -> None:
    from store.sqlite import open_reader as open_connection

    conn = await open_connection(path.resolve().as_uri())
    try:
        with pytest.raises(sqlite3.OperationalError):
            await conn.execute(statement)
    finally:
        await conn.close()
    assert await writer.counters() == dict.fromkeys(COUNTERS, 0)


async def test_a_batch_that_cannot_begin_because_the_store_is_locked_changes_nothing(
    path: Path, writer: SqliteWriter
) -> None:
    await writer.apply([[event("a")]])
    before = await writer.counters()
    await writer._conn.execute("PRAGMA busy_timeout = 50")
    locker = raw(path)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="database is locked"):
            await writer.apply([[event("b"), event("a")], None])
        assert not writer._conn.in_transaction
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert await writer.counters() == before
    assert await writer.apply([[event("b"), event("a")], None]) == BatchResult(
        received=3, unique_processed=1, duplicate_dropped=1, invalid=1
    )


async def test_a_batch_larger_than_one_existence_query_counts_exactly(writer: SqliteWriter) -> None:
    await writer.apply([[event(f"k{i}") for i in range(0, 1500, 2)]])

    result = await writer.apply([[event(f"k{i}") for i in range(1500)]])

    assert result == BatchResult(received=1500, unique_processed=750, duplicate_dropped=750)


# --- one writer per file, with real processes -------------------------------------------------------------


def consumer(path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        DB_PATH=str(path),
        # Nothing listens there: the consumer holds the store and keeps retrying the broker.
        AMQP_URL="amqp://guest:guest@127.0.0.1:1/",
        RECONNECT_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def test_a_second_consumer_on_the_same_sqlite_file_refuses_to_start_in_one_line(
    path: Path, tmp_path: Path
) -> None:
    first = consumer(path, tmp_path / "first.log")
    try:

        def holding() -> bool:
            # The store is open (and locked); with no broker it reports that it is connecting, not consuming.
            state = json.loads(status.path_for(path).read_text())
            return bool(state["state"] == "connecting")

        await eventually(holding, 30, message="the first consumer holds the store")
        assert lock_path(path).exists()

        second = subprocess.run(
            [sys.executable, "-m", "consumer"],
            cwd=REPO,
            env={**os.environ, "DB_PATH": str(path), "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if " INFO " not in line]
        assert len(errors) == 1, second.stderr
        assert f"another consumer is already writing DB_PATH={path}" in errors[0]
        assert first.poll() is None, "the first consumer goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0

    again = subprocess.Popen(
        [sys.executable, "-m", "consumer"],
        cwd=REPO,
        env={**os.environ, "DB_PATH": str(path), "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(holding, 30, message="a consumer starts once the first one stopped")
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0


async def test_a_batch_is_one_call_on_the_connections_thread_however_many_events_it_holds(
    writer: SqliteWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary of the store's fast path (store/sqlite/thread.py): a whole batch transaction, duplicates
    and stored copies included, costs one round trip between the event loop and the connection's thread."""
    from store.sqlite.thread import SqliteThread

    calls: list[str] = []
    real_run = SqliteThread.run

    async def counted(self: SqliteThread, fn: object, *args: object) -> object:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real_run(self, fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(SqliteThread, "run", counted)

    def envelopes(start: int, stop: int) -> list[list[Event]]:
        return [[event(f"e{i}", n=i) for i in range(k, k + 100)] for k in range(start, stop, 100)]

    first = await writer.apply(envelopes(0, 500))
    assert calls == ["_write"], calls
    calls.clear()
    # Half of them again (duplicates, whose stored copies are read), half new.
    again = await writer.apply(envelopes(250, 750))
    assert calls == ["_write"], calls
    assert (first.unique_processed, again.unique_processed, again.duplicate_dropped) == (500, 250, 250)
