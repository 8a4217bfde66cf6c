"""Store.apply: one transaction per batch holding the events, the dedup keys and exact counters."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from consumer.store import BatchResult, Store
from contract.event import Event

ZERO = {"received": 0, "unique_processed": 0, "duplicate_dropped": 0, "invalid": 0, "conflicts": 0}


def event(event_id: str, topic: str = "orders", **payload: Any) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp="2026-11-22T10:15:00Z",
        source="test",
        payload=payload,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "events.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    opened = Store.open(path)
    yield opened
    opened.close()


def stored_count(store: Store) -> int:
    return int(store._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def stored_payload(store: Store, topic: str, event_id: str) -> str:
    row = store._conn.execute(
        "SELECT payload FROM events WHERE topic = ? AND event_id = ?", (topic, event_id)
    ).fetchone()
    return str(row[0])


def topic_counts(store: Store) -> dict[str, int]:
    return dict(store._conn.execute("SELECT topic, count FROM topics").fetchall())


def test_a_new_store_has_every_counter_at_zero(store: Store) -> None:
    assert store.counters() == ZERO


def test_new_events_are_stored_and_counted(store: Store) -> None:
    result = store.apply([[event("a"), event("b")], [event("c")]])

    assert result == BatchResult(received=3, unique_processed=3)
    assert store.counters() == {**ZERO, "received": 3, "unique_processed": 3}
    assert stored_count(store) == 3


def test_a_stored_event_keeps_every_field(store: Store) -> None:
    store.apply([[event("a", topic="billing", amount=42.5, tags=["x"])]])

    row = store._conn.execute("SELECT topic, event_id, timestamp, source, payload FROM events").fetchone()
    expected = event("a", topic="billing", amount=42.5, tags=["x"])
    assert row == (
        "billing",
        "a",
        "2026-11-22T10:15:00Z",
        "test",
        expected.payload_json(),
    )


def test_a_duplicate_across_batches_is_counted_and_not_stored_twice(store: Store) -> None:
    store.apply([[event("a")]])

    result = store.apply([[event("a")]])

    assert result == BatchResult(received=1, duplicate_dropped=1)
    assert store.counters() == {**ZERO, "received": 2, "unique_processed": 1, "duplicate_dropped": 1}
    assert stored_count(store) == 1


def test_a_duplicate_in_one_batch_is_counted_once(store: Store) -> None:
    result = store.apply([[event("a")], [event("a")], [event("b"), event("a")]])

    assert result == BatchResult(received=4, unique_processed=2, duplicate_dropped=2)
    assert stored_count(store) == 2


def test_a_duplicate_in_one_envelope_is_counted_once(store: Store) -> None:
    result = store.apply([[event("a"), event("a")]])

    assert result == BatchResult(received=2, unique_processed=1, duplicate_dropped=1)
    assert stored_count(store) == 1


def test_the_same_event_id_under_another_topic_is_a_different_event(store: Store) -> None:
    result = store.apply([[event("a", topic="orders")], [event("a", topic="payments")]])

    assert result == BatchResult(received=2, unique_processed=2)
    assert topic_counts(store) == {"orders": 1, "payments": 1}


def test_an_identical_resend_is_a_duplicate_but_not_a_conflict(store: Store) -> None:
    store.apply([[event("a", amount=1)]])

    result = store.apply([[event("a", amount=1)]])

    assert result == BatchResult(received=1, duplicate_dropped=1, conflicts=0)


def test_a_reused_key_with_another_payload_is_a_duplicate_and_a_conflict_and_the_first_wins(
    store: Store,
) -> None:
    store.apply([[event("a", amount=1)]])

    result = store.apply([[event("a", amount=2)]])

    assert result == BatchResult(received=1, duplicate_dropped=1, conflicts=1)
    assert store.counters() == {
        **ZERO,
        "received": 2,
        "unique_processed": 1,
        "duplicate_dropped": 1,
        "conflicts": 1,
    }
    assert stored_payload(store, "orders", "a") == '{"amount":1}'


def test_a_conflict_within_one_batch_keeps_the_first_payload(store: Store) -> None:
    result = store.apply([[event("a", amount=1)], [event("a", amount=2)], [event("a", amount=1)]])

    assert result == BatchResult(received=3, unique_processed=1, duplicate_dropped=2, conflicts=1)
    assert stored_payload(store, "orders", "a") == '{"amount":1}'


def test_an_invalid_message_counts_once_as_invalid_and_received(store: Store) -> None:
    result = store.apply([None])

    assert result == BatchResult(received=1, invalid=1)
    assert store.counters() == {**ZERO, "received": 1, "invalid": 1}
    assert stored_count(store) == 0


def test_invalid_messages_mixed_with_valid_ones_are_each_counted_once(store: Store) -> None:
    result = store.apply([None, [event("a"), event("b")], None])

    assert result == BatchResult(received=4, unique_processed=2, invalid=2)


def test_an_empty_envelope_counts_nothing(store: Store) -> None:
    result = store.apply([[]])

    assert result == BatchResult()
    assert store.counters() == ZERO
    assert stored_count(store) == 0


def test_an_empty_batch_counts_nothing(store: Store) -> None:
    assert store.apply([]) == BatchResult()
    assert store.counters() == ZERO


def test_a_commit_records_when_it_happened(store: Store) -> None:
    store.apply([[event("a")]])

    (value,) = store._conn.execute("SELECT value FROM consumer_state WHERE key = 'last_commit_at'").fetchone()
    assert str(value).endswith("Z")


def test_topic_counts_equal_the_stored_events_per_topic(store: Store) -> None:
    store.apply([[event("a", topic="orders"), event("b", topic="orders")], [event("c", topic="auth")]])
    store.apply([[event("a", topic="orders")], [event("d", topic="auth"), event("e", topic="billing")]])

    stored = dict(store._conn.execute("SELECT topic, COUNT(*) FROM events GROUP BY topic").fetchall())
    assert topic_counts(store) == stored == {"orders": 2, "auth": 2, "billing": 1}


def random_batches(seed: int) -> list[list[list[Event] | None]]:
    """20 batches of messages drawing from a small key space, so keys repeat within and across batches."""
    rng = random.Random(seed)
    topics = ["orders", "payments", "auth", "search"]
    batches: list[list[list[Event] | None]] = []
    for _ in range(20):
        messages: list[list[Event] | None] = []
        for _ in range(rng.randrange(1, 12)):
            if rng.random() < 0.08:
                messages.append(None)
                continue
            envelope = []
            for _ in range(rng.randrange(0, 6)):
                key = rng.randrange(150)
                # One resend in ten changes its payload: a conflict.
                version = 1 if rng.random() < 0.1 else 0
                envelope.append(event(f"e{key}", topic=topics[key % len(topics)], version=version))
            messages.append(envelope)
        batches.append(messages)
    return batches


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counters_obey_the_invariant_after_a_random_mix(path: Path, seed: int) -> None:
    batches = random_batches(seed)
    sent = [item for batch in batches for message in batch if message is not None for item in message]
    invalid = sum(message is None for batch in batches for message in batch)
    assert len(sent) > 200

    store = Store.open(path)
    total = BatchResult()
    try:
        for batch in batches:
            total.add(store.apply(batch))
            c = store.counters()
            assert c["received"] == c["unique_processed"] + c["duplicate_dropped"] + c["invalid"]
            assert c["unique_processed"] == stored_count(store)
        counters = store.counters()
        stored_keys = set(store._conn.execute("SELECT topic, event_id FROM events").fetchall())
        stored_topics = dict(
            store._conn.execute("SELECT topic, COUNT(*) FROM events GROUP BY topic").fetchall()
        )
        topics = topic_counts(store)
    finally:
        store.close()

    unique_keys = {item.key() for item in sent}
    assert counters == {
        "received": len(sent) + invalid,
        "unique_processed": len(unique_keys),
        "duplicate_dropped": len(sent) - len(unique_keys),
        "invalid": invalid,
        "conflicts": counters["conflicts"],
    }
    assert counters == {
        "received": total.received,
        "unique_processed": total.unique_processed,
        "duplicate_dropped": total.duplicate_dropped,
        "invalid": total.invalid,
        "conflicts": total.conflicts,
    }
    assert stored_keys == unique_keys
    assert topics == stored_topics


def test_conflicts_in_a_random_mix_are_the_resends_whose_content_differs_from_the_first(path: Path) -> None:
    batches = random_batches(7)
    first: dict[tuple[str, str], bytes] = {}
    expected_conflicts = 0
    for batch in batches:
        for message in batch:
            for item in message or []:
                if item.key() not in first:
                    first[item.key()] = item.content_hash()
                elif first[item.key()] != item.content_hash():
                    expected_conflicts += 1
    assert expected_conflicts > 0

    store = Store.open(path)
    try:
        for batch in batches:
            store.apply(batch)
        assert store.counters()["conflicts"] == expected_conflicts
    finally:
        store.close()


def test_counters_events_and_topics_survive_closing_and_reopening(path: Path) -> None:
    store = Store.open(path)
    store.apply([[event("a"), event("b", topic="auth")], None, [event("a", amount=9)]])
    before = (store.counters(), stored_count(store), topic_counts(store))
    store.close()

    reopened = Store.open(path)
    try:
        assert (reopened.counters(), stored_count(reopened), topic_counts(reopened)) == before
        assert before[0] == {
            "received": 4,
            "unique_processed": 2,
            "duplicate_dropped": 1,
            "invalid": 1,
            "conflicts": 1,
        }
        result = reopened.apply([[event("a"), event("c")]])
        assert result == BatchResult(received=2, unique_processed=1, duplicate_dropped=1)
        assert reopened.counters()["received"] == 6
    finally:
        reopened.close()


# --- failing batches ---------------------------------------------------------------------------------------


def snapshot(store: Store) -> tuple[dict[str, int], int, dict[str, int], list[tuple[Any, ...]]]:
    state = store._conn.execute("SELECT key, value FROM consumer_state ORDER BY key").fetchall()
    return store.counters(), stored_count(store), topic_counts(store), state


def test_a_batch_that_cannot_begin_because_the_store_is_locked_changes_nothing(
    path: Path, store: Store
) -> None:
    store.apply([[event("a")]])
    before = snapshot(store)
    batch: list[list[Event] | None] = [[event("b"), event("a")], None]
    store._conn.execute("PRAGMA busy_timeout = 50")

    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            store.apply(batch)
        assert not store._conn.in_transaction
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert snapshot(store) == before
    assert store.apply(batch) == BatchResult(received=3, unique_processed=1, duplicate_dropped=1, invalid=1)
    assert store.counters() == {
        **ZERO,
        "received": 4,
        "unique_processed": 2,
        "duplicate_dropped": 1,
        "invalid": 1,
    }


class _Exploding:
    """Stands in for an Event whose processing fails halfway through the batch."""

    topic = "t"
    event_id = "boom"
    timestamp = "2026-01-01T00:00:00Z"
    source = "s"

    def payload_json(self) -> str:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_batch_that_fails_halfway_rolls_back_every_row_and_counter(store: Store) -> None:
    store.apply([[event("a")]])
    before = snapshot(store)
    batch = [[event("b"), event("c", topic="auth"), event("a", amount=5)], None, [cast(Event, _Exploding())]]

    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        store.apply(batch)

    assert not store._conn.in_transaction
    assert snapshot(store) == before
    good = batch[:2]
    assert store.apply(good) == BatchResult(
        received=4, unique_processed=2, duplicate_dropped=1, invalid=1, conflicts=1
    )


class _CursorFailingCommit:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class _ConnectionFailingCommit:
    """Delegates to a real connection, except that a COMMIT through its cursors fails (like a full disk)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> _CursorFailingCommit:
        return _CursorFailingCommit(self._conn.cursor())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_batch_whose_commit_fails_rolls_back_completely(path: Path, store: Store) -> None:
    store.apply([[event("a")]])
    before = snapshot(store)
    real = store._conn
    batch: list[list[Event] | None] = [[event("b"), event("a", amount=2)], None]

    store._conn = cast(sqlite3.Connection, _ConnectionFailingCommit(real))
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.apply(batch)
    store._conn = real

    assert not real.in_transaction
    assert snapshot(store) == before
    assert store.apply(batch) == BatchResult(
        received=3, unique_processed=1, duplicate_dropped=1, invalid=1, conflicts=1
    )
