"""The api's read side: opaque keyset cursors and StoreReader against a real store in tmp_path."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.queries import BadCursor, StoreReader, decode_cursor, encode_cursor
from consumer.store import Store
from contract import schema
from contract.event import Event


def event(event_id: str, topic: str = "orders", **payload: Any) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp="2026-11-22T12:15:00+02:00",
        source="test",
        payload=payload,
    )


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- cursors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 9, 10, 12345, 2**62])
def test_a_cursor_decodes_to_the_seq_it_encodes(seq: int) -> None:
    assert decode_cursor(encode_cursor(seq)) == seq


def test_a_cursor_is_url_safe_and_unpadded() -> None:
    for seq in range(200):
        cursor = encode_cursor(seq)
        assert "=" not in cursor
        assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("", id="empty"),
        pytest.param("!!!", id="garbage"),
        pytest.param("not-a-cursor", id="words"),
        pytest.param("12", id="bare-number"),
        pytest.param(b64("v1:"), id="no-seq"),
        pytest.param(b64("v1:abc"), id="seq-not-a-number"),
        pytest.param(b64("v1:-1"), id="negative"),
        pytest.param(b64("v2:5"), id="other-version"),
        pytest.param(b64("5"), id="no-version"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe:1").decode(), id="not-utf8"),
    ],
)
def test_a_cursor_not_made_by_this_api_is_a_bad_cursor(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(cursor)


# --- StoreReader -------------------------------------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "events.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    opened = Store.open(path)
    yield opened
    opened.close()


@pytest.fixture
def reader(path: Path) -> Iterator[StoreReader]:
    opened = StoreReader(path)
    yield opened
    opened.close()


def ids(page_events: list[dict[str, Any]]) -> list[str]:
    return [item["event_id"] for item in page_events]


def test_a_page_lists_events_oldest_first(store: Store, reader: StoreReader) -> None:
    store.apply([[event("c"), event("a")]])
    store.apply([[event("b", topic="auth")]])

    page = reader.page(None, 100, 0)

    assert ids(page.events) == ["c", "a", "b"]
    assert page.next_cursor is None


def test_a_page_row_has_the_stored_fields_in_utc(store: Store, reader: StoreReader) -> None:
    store.apply([[event("a", amount=42.5, tags=["x"])]])

    (row,) = reader.page(None, 10, 0).events

    received_at = row.pop("received_at")
    assert row == {
        "topic": "orders",
        "event_id": "a",
        "timestamp": "2026-11-22T10:15:00Z",
        "source": "test",
        "payload": {"amount": 42.5, "tags": ["x"]},
    }
    assert received_at.endswith("Z")


def test_a_page_filtered_by_topic_holds_only_that_topic(store: Store, reader: StoreReader) -> None:
    store.apply([[event("a"), event("b", topic="auth"), event("c"), event("d", topic="auth")]])

    assert ids(reader.page("auth", 100, 0).events) == ["b", "d"]
    assert ids(reader.page("orders", 100, 0).events) == ["a", "c"]


def test_an_unknown_topic_is_an_empty_page(store: Store, reader: StoreReader) -> None:
    store.apply([[event("a")]])

    page = reader.page("nope", 100, 0)

    assert page.events == []
    assert page.next_cursor is None


def test_next_cursor_is_present_exactly_when_more_events_follow(store: Store, reader: StoreReader) -> None:
    store.apply([[event(name) for name in "abcde"]])

    first = reader.page(None, 2, 0)
    assert ids(first.events) == ["a", "b"]
    assert first.next_cursor is not None

    second = reader.page(None, 2, decode_cursor(first.next_cursor))
    assert ids(second.events) == ["c", "d"]
    assert second.next_cursor is not None

    third = reader.page(None, 2, decode_cursor(second.next_cursor))
    assert ids(third.events) == ["e"]
    assert third.next_cursor is None


def test_a_page_that_ends_exactly_at_the_last_event_has_no_next_cursor(
    store: Store, reader: StoreReader
) -> None:
    store.apply([[event(name) for name in "abcd"]])

    first = reader.page(None, 2, 0)
    assert first.next_cursor is not None
    second = reader.page(None, 2, decode_cursor(first.next_cursor))

    assert ids(second.events) == ["c", "d"]
    assert second.next_cursor is None
    assert reader.page(None, 4, 0).next_cursor is None


def test_paging_a_topic_visits_each_of_its_events_once(store: Store, reader: StoreReader) -> None:
    store.apply([[event(f"e{i}", topic="auth" if i % 3 == 0 else "orders") for i in range(20)]])

    seen: list[str] = []
    after = 0
    while True:
        page = reader.page("auth", 3, after)
        seen += ids(page.events)
        if page.next_cursor is None:
            break
        after = decode_cursor(page.next_cursor)

    assert seen == [f"e{i}" for i in range(0, 20, 3)]


def test_events_stored_after_a_cursor_was_issued_appear_on_the_next_page(
    store: Store, reader: StoreReader
) -> None:
    store.apply([[event("a"), event("b")]])
    first = reader.page(None, 1, 0)
    assert first.next_cursor is not None

    store.apply([[event("c")]])

    assert ids(reader.page(None, 10, decode_cursor(first.next_cursor)).events) == ["b", "c"]


def test_one_event_is_found_by_topic_and_an_id_with_slashes(store: Store, reader: StoreReader) -> None:
    store.apply([[event("tenant/42/order/7", amount=1), event("tenant", amount=2)]])

    found = reader.event("orders", "tenant/42/order/7")

    assert found is not None
    assert found["event_id"] == "tenant/42/order/7"
    assert found["payload"] == {"amount": 1}


def test_an_event_under_another_topic_is_not_found(store: Store, reader: StoreReader) -> None:
    store.apply([[event("a")]])

    assert reader.event("auth", "a") is None
    assert reader.event("orders", "b") is None


def test_a_snapshot_holds_the_counters_and_topic_counts(store: Store, reader: StoreReader) -> None:
    store.apply([[event("a"), event("b", topic="auth")], None, [event("a", amount=2)], []])

    snap = reader.snapshot()

    assert snap.store == "ok"
    assert snap.counters == {
        "received": 4,
        "unique_processed": 2,
        "duplicate_dropped": 1,
        "invalid": 1,
        "conflicts": 1,
    }
    assert snap.topic_counts == {"auth": 1, "orders": 1}
    assert "last_commit_at" in snap.consumer


def test_a_reader_of_a_missing_store_sees_nothing_and_starts_working_once_it_exists(path: Path) -> None:
    reader = StoreReader(path)
    try:
        assert reader.page(None, 100, 0).events == []
        assert reader.page(None, 100, 0).next_cursor is None
        assert reader.event("orders", "a") is None
        missing = reader.snapshot()
        assert missing.store == "missing"
        assert missing.counters == dict.fromkeys(schema.COUNTERS, 0)
        assert missing.topic_counts == {}
        assert reader.check() == "missing"
        assert not path.exists()

        store = Store.open(path)
        try:
            store.apply([[event("a"), event("b")]])

            assert ids(reader.page(None, 100, 0).events) == ["a", "b"]
            assert reader.event("orders", "a") is not None
            snap = reader.snapshot()
            assert snap.store == "ok"
            assert snap.counters["unique_processed"] == 2
            assert reader.check() == "ok"
        finally:
            store.close()
    finally:
        reader.close()


def test_a_reader_of_a_store_file_without_tables_yet_reports_it_missing(
    path: Path, reader: StoreReader
) -> None:
    path.parent.mkdir(parents=True)
    path.touch()

    assert reader.page(None, 10, 0).events == []
    assert reader.snapshot().store == "missing"
    assert reader.check() == "missing"


def test_a_reader_keeps_working_after_the_writer_closes(path: Path, reader: StoreReader) -> None:
    store = Store.open(path)
    store.apply([[event("a")]])
    assert ids(reader.page(None, 10, 0).events) == ["a"]
    store.close()

    assert ids(reader.page(None, 10, 0).events) == ["a"]
    assert reader.snapshot().counters["received"] == 1


def test_a_reader_opened_after_the_writer_closed_reads_the_store(path: Path) -> None:
    store = Store.open(path)
    store.apply([[event("a"), event("b", topic="auth")]])
    store.close()

    reader = StoreReader(path)
    try:
        assert ids(reader.page(None, 10, 0).events) == ["a", "b"]
        assert reader.snapshot().topic_counts == {"auth": 1, "orders": 1}
    finally:
        reader.close()


def test_the_largest_sqlite_integer_is_a_cursor_past_every_event(store: Store, reader: StoreReader) -> None:
    store.apply([[event("a")]])

    page = reader.page(None, 10, decode_cursor(encode_cursor(2**63 - 1)))

    assert page.events == []
    assert page.next_cursor is None


def test_a_cursor_beyond_the_sqlite_integer_range_is_a_bad_cursor() -> None:
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor(2**63))
