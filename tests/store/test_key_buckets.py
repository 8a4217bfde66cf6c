"""SQLite's key buckets: keys stay unique across sealed buckets, filters survive a restart, and
KEY_RETENTION drops whole buckets. Buckets are made small here so a test seals many."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from contract.event import Event
from store import Expired, Retention, key_hash
from store.filters import Filters, build
from store.sqlite import SqliteReader, SqliteWriter
from store.sqlite import buckets as buckets_module
from tests.harness.waiting import eventually

SMALL = 50


@pytest.fixture
def small_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buckets_module, "BUCKET_KEYS", SMALL)


def event(event_id: str, **payload: object) -> Event:
    return Event(
        topic="orders", event_id=event_id, timestamp="2026-11-22T10:15:00Z", source="t", payload=payload
    )


def bucket_rows(path: Path) -> list[tuple[int, int, bool]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT bucket, keys, filter IS NOT NULL FROM key_buckets ORDER BY bucket")
        return [(int(b), int(k), bool(f)) for b, k, f in rows]
    finally:
        conn.close()


def key_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM keys").fetchone()[0])
    finally:
        conn.close()


def test_a_filter_lets_through_every_key_it_holds_and_few_others() -> None:
    held = [key_hash("t", f"in-{i}") for i in range(100_000)]
    others = [key_hash("t", f"out-{i}") for i in range(100_000)]
    filters = Filters()
    filters.add(7, build(held))

    assert filters.candidates(held) == {7: list(range(100_000))}
    false = len(filters.candidates(others).get(7, []))
    assert false < 300  # 162 of 100,000 measured (store/filters.py)


async def test_keys_stay_unique_across_sealed_buckets_and_after_a_restart(
    tmp_path: Path, small_buckets: None
) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    try:
        for start in range(0, 230, 23):
            await writer.apply([[event(f"e-{i}") for i in range(start, start + 23)]])
        sealed = bucket_rows(path)
        assert [row[2] for row in sealed] == [True] * (len(sealed) - 1) + [False]
        assert len(sealed) >= 4
        again = await writer.apply([[event(f"e-{i}", changed=True) for i in range(0, 230, 7)]])
        assert (again.unique_processed, again.duplicate_dropped, again.conflicts) == (0, 33, 33)
    finally:
        await writer.close()

    reopened = await SqliteWriter.open(path)
    try:
        result = await reopened.apply([[event(f"e-{i}") for i in range(225, 240)]])
        assert (result.unique_processed, result.duplicate_dropped) == (10, 5)
    finally:
        await reopened.close()
    assert key_rows(path) == 240


async def test_key_retention_drops_whole_sealed_buckets_and_a_resend_after_it_is_stored_again(
    tmp_path: Path, small_buckets: None
) -> None:
    path = tmp_path / "events.db"
    writer = await SqliteWriter.open(path)
    reader = SqliteReader(path)
    try:
        await writer.record_retention(Retention(timedelta(seconds=1), timedelta(seconds=2)))
        await writer.apply([[event(f"old-{i}") for i in range(120)]])

        async def forgotten() -> bool:
            return await reader.event_row("orders", "old-0") is None

        await eventually(forgotten, 15, message="old keys forgotten")
        await writer.apply([[event("new")]])
        done = await writer.sweep()

        assert (done.events, done.keys) == (120, 120)
        assert key_rows(path) == 1
        assert await reader.event_row("orders", "old-5") is None
        result = await writer.apply([[event("old-5")]])
        assert result.unique_processed == 1
        assert not isinstance(await reader.event_row("orders", "old-5"), Expired | None)
    finally:
        await reader.close()
        await writer.close()
