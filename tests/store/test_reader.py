"""Reader on both backends: keyset pages, one event, the stats snapshot, and a store not created yet."""

from __future__ import annotations

import json
from typing import Any

from api.queries import Page as ApiPage
from api.queries import row_json
from contract.schema import COUNTERS
from store import Page, Reader, Writer, open_reader, open_writer
from tests.harness.stores import StoreSettings
from tests.store.test_writer import event


def ids(page: Page) -> list[str]:
    return [row[2] for row in page.rows]


def events(page: Page) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = json.loads(ApiPage.of(page).json())
    return parsed


async def test_a_page_lists_events_oldest_first_and_a_batch_in_arrival_order(
    writer: Writer, reader: Reader
) -> None:
    await writer.apply([[event("c"), event("a")], [event("b", topic="auth")]])
    await writer.apply([[event("d")]])

    page = await reader.page(None, 100, 0)

    assert ids(page) == ["c", "a", "b", "d"]
    assert page.next_after is None


async def test_a_page_row_has_the_stored_fields_in_utc(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a", amount=42.5, tags=["x"])]])

    (row,) = events(await reader.page(None, 10, 0))

    received_at = row.pop("received_at")
    assert row == {
        "topic": "orders",
        "event_id": "a",
        "timestamp": "2026-11-22T10:15:00Z",
        "source": "test",
        "payload": {"amount": 42.5, "tags": ["x"]},
    }
    assert received_at.endswith("Z")


async def test_the_json_of_a_row_is_the_same_bytes_on_every_backend(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("ü/1", topic="billing", z=1, a=[1.5, "é", None], n={"b": True})]])

    (row,) = (await reader.page(None, 10, 0)).rows
    received_at = row[6]

    assert row_json(row) == (
        '{"topic":"billing","event_id":"ü/1","timestamp":"2026-11-22T10:15:00Z","source":"test",'
        f'"payload":{{"z":1,"a":[1.5,"é",null],"n":{{"b":true}}}},"received_at":"{received_at}"}}'
    )


async def test_a_page_filtered_by_topic_holds_only_that_topic(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a"), event("b", topic="auth"), event("c"), event("d", topic="auth")]])

    assert ids(await reader.page("auth", 100, 0)) == ["b", "d"]
    assert ids(await reader.page("orders", 100, 0)) == ["a", "c"]
    assert (await reader.page("nope", 100, 0)).rows == []


async def test_next_is_present_exactly_when_more_events_follow(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event(name) for name in "abcde"]])

    first = await reader.page(None, 2, 0)
    assert ids(first) == ["a", "b"]
    assert first.next_after is not None
    second = await reader.page(None, 2, first.next_after)
    assert ids(second) == ["c", "d"]
    assert second.next_after is not None
    third = await reader.page(None, 2, second.next_after)
    assert ids(third) == ["e"]
    assert third.next_after is None
    assert (await reader.page(None, 5, 0)).next_after is None


async def test_paging_a_topic_visits_each_of_its_events_once(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event(f"e{i}", topic="auth" if i % 3 == 0 else "orders") for i in range(20)]])

    seen: list[str] = []
    after = 0
    while True:
        page = await reader.page("auth", 3, after)
        seen += ids(page)
        if page.next_after is None:
            break
        after = page.next_after

    assert seen == [f"e{i}" for i in range(0, 20, 3)]


async def test_events_stored_after_a_page_appear_on_the_next_page(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a"), event("b")]])
    first = await reader.page(None, 1, 0)
    assert first.next_after is not None

    await writer.apply([[event("c")]])

    assert ids(await reader.page(None, 10, first.next_after)) == ["b", "c"]


async def test_the_largest_64_bit_seq_is_past_every_event(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a")]])

    page = await reader.page(None, 10, 2**63 - 1)

    assert (page.rows, page.next_after) == ([], None)


async def test_one_event_is_found_by_topic_and_an_id_with_slashes(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("tenant/42/order/7", amount=1), event("tenant", amount=2)]])

    found = await reader.event_row("orders", "tenant/42/order/7")

    assert found is not None
    assert (found[1], found[2], json.loads(found[5])) == ("orders", "tenant/42/order/7", {"amount": 1})
    assert await reader.event_row("auth", "tenant/42/order/7") is None
    assert await reader.event_row("orders", "b") is None


async def test_a_snapshot_holds_the_counters_topics_in_first_seen_order_and_the_consumer_state(
    writer: Writer, reader: Reader
) -> None:
    await writer.record_start("2026-11-22T10:00:00Z")
    await writer.apply(
        [[event("a", topic="zeta"), event("b", topic="auth")], None, [event("a", topic="zeta", n=2)]]
    )
    await writer.apply([[event("c", topic="mid"), event("d", topic="auth")]])

    snap = await reader.snapshot()

    assert snap.store == "ok"
    assert snap.counters == {
        "received": 6,
        "unique_processed": 4,
        "duplicate_dropped": 1,
        "invalid": 1,
        "conflicts": 1,
    }
    assert list(snap.topic_counts.items()) == [("zeta", 1), ("auth", 2), ("mid", 1)]
    assert snap.consumer["started_at"] == "2026-11-22T10:00:00Z"
    assert "last_commit_at" in snap.consumer
    assert snap.durability == await writer.durability()
    assert snap.durability.durable is True
    assert await reader.durability() == snap.durability


async def test_a_reader_of_a_store_not_created_yet_sees_nothing_then_starts_working(
    settings: StoreSettings,
) -> None:
    reader = open_reader(settings)
    try:
        assert await reader.page(None, 100, 0) == Page([], None)
        assert await reader.event_row("orders", "a") is None
        missing = await reader.snapshot()
        assert (missing.store, missing.counters, missing.topic_counts) == (
            "missing",
            dict.fromkeys(COUNTERS, 0),
            {},
        )
        assert missing.durability.durable is None
        assert await reader.check() == "missing"

        writer = await open_writer(settings)
        try:
            await writer.apply([[event("a"), event("b")]])
            assert ids(await reader.page(None, 100, 0)) == ["a", "b"]
            assert await reader.event_row("orders", "a") is not None
            snap = await reader.snapshot()
            assert (snap.store, snap.counters["unique_processed"]) == ("ok", 2)
            assert await reader.check() == "ok"
        finally:
            await writer.close()
        assert ids(await reader.page(None, 100, 0)) == ["a", "b"], "reads go on after the writer closed"
    finally:
        await reader.close()


async def test_a_reader_opened_after_the_writer_closed_reads_the_store(settings: StoreSettings) -> None:
    writer = await open_writer(settings)
    await writer.apply([[event("a"), event("b", topic="auth")]])
    await writer.close()

    reader = open_reader(settings)
    try:
        assert ids(await reader.page(None, 10, 0)) == ["a", "b"]
        assert (await reader.snapshot()).topic_counts == {"orders": 1, "auth": 1}
    finally:
        await reader.close()


async def test_a_descending_page_lists_the_newest_first_and_continues_below_its_last_seq(
    writer: Writer, reader: Reader
) -> None:
    await writer.apply([[event(name) for name in "abcde"], [event("x", topic="auth")]])

    first = await reader.page(None, 2, 2**63 - 1, descending=True)
    assert ids(first) == ["x", "e"]
    assert first.next_after is not None
    second = await reader.page(None, 10, first.next_after, descending=True)
    assert ids(second) == ["d", "c", "b", "a"]
    assert second.next_after is None
    assert ids(await reader.page("auth", 10, 2**63 - 1, descending=True)) == ["x"]
