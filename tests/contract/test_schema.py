"""The store schema: what open_writer creates and enforces, and what open_reader refuses to do."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from contract import schema
from contract.schema import SCHEMA_VERSION, SchemaError, migrate, open_reader, open_writer


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_open_writer_creates_the_store_and_its_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "events.db"

    conn = open_writer(path)
    try:
        assert path.exists()
        assert table_names(conn) == {"events", "counters", "topics", "consumer_state"}
    finally:
        conn.close()


def test_open_writer_starts_every_counter_at_zero(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "events.db")
    try:
        counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    finally:
        conn.close()

    assert counters == dict.fromkeys(schema.COUNTERS, 0)


def test_open_writer_uses_wal_and_synchronous_full(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "events.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert schema.durability(conn) == {"journal_mode": "wal", "synchronous": "FULL"}
    finally:
        conn.close()


def test_open_writer_sets_user_version_to_the_schema_version(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "events.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_open_writer_leaves_no_transaction_open(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "events.db")
    try:
        assert not conn.in_transaction
    finally:
        conn.close()


def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = open_writer(path)
    try:
        conn.execute("UPDATE counters SET value = 7 WHERE name = 'received'")
        migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT value FROM counters WHERE name = 'received'").fetchone()[0] == 7
    finally:
        conn.close()


def test_reopening_an_existing_store_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    conn = open_writer(path)
    conn.execute("UPDATE counters SET value = 3 WHERE name = 'invalid'")
    conn.close()

    again = open_writer(path)
    try:
        assert again.execute("SELECT value FROM counters WHERE name = 'invalid'").fetchone()[0] == 3
        assert again.execute("SELECT COUNT(*) FROM counters").fetchone()[0] == len(schema.COUNTERS)
    finally:
        again.close()


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()

    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        open_writer(path)


def test_the_event_key_is_unique_in_the_schema(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "events.db")
    row = ("t", "e", "2026-01-01T00:00:00Z", "s", "{}", "2026-01-01T00:00:00Z")
    insert = (
        "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    try:
        conn.execute(insert, row)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert, row)
    finally:
        conn.close()


def test_open_reader_on_a_missing_store_raises_operational_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "events.db"

    with pytest.raises(sqlite3.OperationalError):
        open_reader(path)
    assert not path.exists()


def test_open_reader_reads_what_the_writer_committed(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = open_writer(path)
    writer.execute("UPDATE counters SET value = 5 WHERE name = 'received'")
    reader = open_reader(path)
    try:
        assert reader.execute("SELECT value FROM counters WHERE name = 'received'").fetchone()[0] == 5
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO topics (topic, count) VALUES ('t', 1)",
        "UPDATE counters SET value = 1 WHERE name = 'received'",
        "DELETE FROM counters",
        "CREATE TABLE intruder (x INTEGER)",
    ],
)
def test_open_reader_cannot_write(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "events.db"
    open_writer(path).close()
    reader = open_reader(path)
    try:
        with pytest.raises(sqlite3.OperationalError):
            reader.execute(statement)
    finally:
        reader.close()

    check = open_writer(path)
    try:
        assert check.execute("SELECT COUNT(*) FROM topics").fetchone()[0] == 0
        assert dict(check.execute("SELECT name, value FROM counters").fetchall()) == dict.fromkeys(
            schema.COUNTERS, 0
        )
    finally:
        check.close()
