"""Receipts on both backends: a marked message's commit is recorded with exactly the events it stored."""

from __future__ import annotations

import asyncio

from contract.event import Event
from store import Reader, Writer, open_writer
from tests.harness.stores import StoreSettings


def event(event_id: str, topic: str = "orders") -> Event:
    return Event(topic=topic, event_id=event_id, timestamp="2026-11-22T10:15:00Z", source="test")


async def test_a_receipt_counts_the_events_its_own_message_stored(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a"), event("b", "auth")]], ["first"])
    a_again = event("a")
    await writer.apply(
        [[a_again, event("c")], [event("c"), event("d")], [event("x")], [a_again]],
        ["second", "third", None, "fourth"],
    )

    found = await reader.receipts(["first", "second", "third", "fourth", "never"])

    # c is new for the message whose copy came first in the batch; the other copy is a duplicate.
    assert found == {"first": (2, 0), "second": (1, 1), "third": (1, 1), "fourth": (0, 1)}
    assert await reader.receipts([]) == {}


async def test_a_redelivered_message_keeps_its_first_receipt(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a"), event("b")]], ["r"])
    await writer.apply([[event("a"), event("b")]], ["r"])

    assert await reader.receipts(["r"]) == {"r": (2, 0)}


async def test_a_batch_returns_the_figures_of_the_receipts_it_inserted_exactly_as_the_store_holds_them(
    writer: Writer, reader: Reader
) -> None:
    first = await writer.apply(
        [[event("a"), event("b", "auth")], [event("a")], [event("z")]], ["r1", "r2", None]
    )
    # A redelivered message (r1 again, now all duplicates) beside a fresh one: only the fresh receipt's row
    # is inserted, so only its figures come back; r1's row keeps the first commit's.
    again = await writer.apply([[event("a"), event("b", "auth")], [event("c"), event("a")]], ["r1", "r3"])

    assert first.receipts == [("r1", 2, 0), ("r2", 0, 1)]
    assert again.receipts == [("r3", 1, 1)]
    stored = await reader.receipts(["r1", "r2", "r3"])
    assert stored == {"r1": (2, 0), "r2": (0, 1), "r3": (1, 1)}
    assert {r: (n, d) for r, n, d in first.receipts + again.receipts} == stored
    unmarked = await writer.apply([[event("d")]])
    assert unmarked.receipts == []


async def test_unmarked_batches_record_no_receipts_and_a_reader_before_the_store_finds_none(
    settings: StoreSettings, reader: Reader
) -> None:
    assert await reader.receipts(["r"]) == {}
    writer = await open_writer(settings)
    try:
        await writer.apply([[event("a")]])
        assert await reader.receipts(["r"]) == {}
    finally:
        await writer.close()


async def test_of_twenty_identical_marked_messages_exactly_one_stores_the_event(
    writer: Writer, reader: Reader
) -> None:
    same = [[event("only")] for _ in range(20)]
    ids = [f"copy-{i}" for i in range(20)]
    # Spread over batches, as a consumer takes them.
    await writer.apply(same[:7], ids[:7])
    await asyncio.gather(writer.apply(same[7:], ids[7:]))

    found = await reader.receipts(ids)

    assert sorted(found.values()) == [(0, 1)] * 19 + [(1, 0)]
