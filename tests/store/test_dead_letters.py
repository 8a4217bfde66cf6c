"""Dead letters on both backends: kept in the transaction counting them invalid, newest first, bounded."""

from __future__ import annotations

import pytest

from contract.event import Event
from store import (
    BatchResult,
    DeadLetterCounts,
    Message,
    Reader,
    Rejected,
    StoreError,
    Writer,
    open_reader,
    open_writer,
)
from store.deadletters import DEAD_LETTER_BODY_BYTES, DEAD_LETTERS_KEPT
from tests.harness.stores import StoreSettings


def event(event_id: str) -> Event:
    return Event(topic="orders", event_id=event_id, timestamp="2026-11-22T10:15:00Z", source="test")


def rejected(n: int, body: bytes = b"{not json", kind: str = "not_json") -> Rejected:
    return Rejected(f"reason {n}", kind, f"orders.{n}", body, at=f"2026-11-22T10:15:{n % 60:02d}Z")


async def test_a_rejected_message_is_kept_with_when_why_where_and_its_body(
    writer: Writer, reader: Reader
) -> None:
    result = await writer.apply([[event("a")], rejected(1), None])

    assert result == BatchResult(received=3, unique_processed=1, invalid=2)
    page = await reader.dead_letters(10, None)
    assert page.next_before is None
    [letter] = page.letters
    assert (letter.at, letter.kind, letter.reason, letter.routing_key, letter.body) == (
        "2026-11-22T10:15:01Z",
        "not_json",
        "reason 1",
        "orders.1",
        b"{not json",
    )
    assert (letter.size, letter.truncated) == (9, False)
    assert await reader.dead_letter_counts() == DeadLetterCounts({"not_json": 1}, kept=1, dropped=0)


async def test_a_body_over_64_kib_is_kept_truncated_and_flagged(writer: Writer, reader: Reader) -> None:
    body = b"[" + b"x" * (DEAD_LETTER_BODY_BYTES + 100)
    await writer.apply([rejected(1, body, "too_large"), rejected(2, body[:DEAD_LETTER_BODY_BYTES])])

    newest, oldest = (await reader.dead_letters(10, None)).letters
    assert (oldest.body, oldest.size, oldest.truncated) == (body[:DEAD_LETTER_BODY_BYTES], len(body), True)
    assert (newest.body, newest.size, newest.truncated) == (
        body[:DEAD_LETTER_BODY_BYTES],
        DEAD_LETTER_BODY_BYTES,
        False,
    )


async def test_dead_letters_are_paged_newest_first(writer: Writer, reader: Reader) -> None:
    for batch in range(3):
        await writer.apply(
            [rejected(2 * batch), [event(f"e{batch}")], rejected(2 * batch + 1, kind="schema")]
        )

    seen: list[str] = []
    before = None
    pages = 0
    while True:
        page = await reader.dead_letters(4, before)
        seen += [letter.reason for letter in page.letters]
        pages += 1
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == [f"reason {n}" for n in range(5, -1, -1)]
    assert pages == 2
    assert await reader.dead_letter_counts() == DeadLetterCounts(
        {"not_json": 3, "schema": 3}, kept=6, dropped=0
    )


async def test_past_the_bound_the_oldest_are_dropped_and_counted(writer: Writer, reader: Reader) -> None:
    await writer.apply([rejected(n, b"x") for n in range(DEAD_LETTERS_KEPT + 3)])
    await writer.apply([rejected(DEAD_LETTERS_KEPT + 3, b"y")])

    counts = await reader.dead_letter_counts()
    assert counts == DeadLetterCounts({"not_json": DEAD_LETTERS_KEPT + 4}, kept=DEAD_LETTERS_KEPT, dropped=4)
    page = await reader.dead_letters(1000, None)
    assert page.letters[0].reason == f"reason {DEAD_LETTERS_KEPT + 3}"
    last = None
    before = page.next_before
    while before is not None:
        page = await reader.dead_letters(1000, before)
        last = page.letters[-1]
        before = page.next_before
    assert last is not None and last.reason == "reason 4"


async def test_a_failed_commit_keeps_no_dead_letter(settings: StoreSettings) -> None:
    def before_commit() -> None:
        raise OSError(5, "disk I/O error")

    failing = await open_writer(settings, before_commit)
    try:
        batch: list[Message] = [rejected(1), [event("a")]]
        with pytest.raises(StoreError, match="disk I/O error"):
            await failing.apply(batch)
    finally:
        await failing.close()
    reader = open_reader(settings)
    try:
        assert (await reader.dead_letters(10, None)).letters == []
        assert await reader.dead_letter_counts() == DeadLetterCounts({}, kept=0, dropped=0)
    finally:
        await reader.close()


def poison(redelivered: bool, body: bytes = b"{not json", message_id: str | None = None) -> Rejected:
    """The same garbage each time, as the consumer hands it over: `redelivered` is the AMQP flag."""
    return Rejected(
        "not JSON", "not_json", "orders.new", body, redelivered=redelivered, message_id=message_id
    )


async def kept_and_counted(reader: Reader) -> tuple[int, dict[str, int]]:
    letters = (await reader.dead_letters(1000, None)).letters
    return len(letters), (await reader.snapshot()).counters


async def test_a_redelivered_invalid_message_already_kept_is_neither_kept_nor_counted_again(
    writer: Writer, reader: Reader
) -> None:
    first = await writer.apply([poison(False), [event("a")]])
    # Its commit's reject never reached the broker: the broker delivers it again, flagged redelivered.
    again = await writer.apply([poison(True), [event("a")]])

    assert (first, first.rejected_again) == (BatchResult(received=2, unique_processed=1, invalid=1), 0)
    assert (again, again.rejected_again) == (BatchResult(received=1, duplicate_dropped=1), 1)
    kept, counters = await kept_and_counted(reader)
    assert kept == 1
    assert counters == {
        "received": 3,
        "unique_processed": 1,
        "duplicate_dropped": 1,
        "invalid": 1,
        "conflicts": 0,
    }
    assert await reader.dead_letter_counts() == DeadLetterCounts({"not_json": 1}, kept=1, dropped=0)


async def test_the_same_garbage_sent_again_is_kept_and_counted_again(writer: Writer, reader: Reader) -> None:
    await writer.apply([poison(False)])
    second = await writer.apply([poison(False)])

    assert (second, second.rejected_again) == (BatchResult(received=1, invalid=1), 0)
    kept, counters = await kept_and_counted(reader)
    assert (kept, counters["received"], counters["invalid"]) == (2, 2, 2)


async def test_a_redelivery_is_known_by_routing_key_size_stored_body_and_message_id(
    writer: Writer, reader: Reader
) -> None:
    long = b"[" + b"x" * (DEAD_LETTER_BODY_BYTES + 10)
    await writer.apply([poison(False), poison(False, long), poison(False, message_id="m-1")])

    # Each differs from every dead letter kept in one part of its identity: all are kept and counted.
    others = [
        Rejected("not JSON", "not_json", "orders.old", b"{not json", redelivered=True),
        poison(True, long + b"x"),  # the same stored (truncated) body, another size
        poison(True, b"{not jsoN"),
        poison(True, message_id="m-2"),
    ]
    result = await writer.apply(others)
    assert (result, result.rejected_again) == (BatchResult(received=4, invalid=4), 0)

    # Each kept dead letter stands for one redelivery per batch: the third copy here is new.
    result = await writer.apply(
        [poison(True), poison(True, long), poison(True, message_id="m-1"), poison(True, long)]
    )
    assert (result, result.rejected_again) == (BatchResult(received=1, invalid=1), 3)
    kept, counters = await kept_and_counted(reader)
    assert (kept, counters["received"], counters["invalid"]) == (8, 8, 8)
    assert sorted(letter.size for letter in (await reader.dead_letters(1000, None)).letters) == sorted(
        [9, len(long), 9, 9, len(long) + 1, 9, 9, len(long)]
    )


async def test_an_invalid_message_with_a_kept_message_id_is_not_kept_again_without_the_redelivered_flag(
    writer: Writer, reader: Reader
) -> None:
    # Competing consumers: one is held past the broker's heartbeat timeout with the message already in its
    # socket's buffer; the broker closes its connection and delivers the message to another, which keeps it.
    # The first then reads its buffered delivery (no redelivered flag: its first delivery) and commits it
    # before it learns that its channel is gone.
    first = await writer.apply([poison(True, message_id="m-1")])
    stale = await writer.apply([poison(False, message_id="m-1"), [event("a")]])

    assert (first, first.rejected_again) == (BatchResult(received=1, invalid=1), 0)
    assert (stale, stale.rejected_again) == (BatchResult(received=1, unique_processed=1), 1)
    kept, counters = await kept_and_counted(reader)
    assert (kept, counters["received"], counters["invalid"]) == (1, 2, 1)


async def test_a_late_first_delivery_claims_the_dead_letter_its_redelivery_left_and_only_once(
    writer: Writer, reader: Reader
) -> None:
    # No message id. A consumer that lost its channel (held past the heartbeat, or still committing) reads
    # its first delivery late: the broker had given the message to another consumer, which kept it as a
    # redelivery. The late first delivery claims that dead letter instead of keeping another.
    redelivery = await writer.apply([poison(True)])
    late_first = await writer.apply([poison(False), [event("a")]])
    # The same garbage sent again later: nothing unclaimed is left for it to be taken for.
    sent_again = await writer.apply([poison(False)])

    assert (redelivery, redelivery.rejected_again) == (BatchResult(received=1, invalid=1), 0)
    assert (late_first, late_first.rejected_again) == (BatchResult(received=1, unique_processed=1), 1)
    assert (sent_again, sent_again.rejected_again) == (BatchResult(received=1, invalid=1), 0)
    kept, counters = await kept_and_counted(reader)
    assert (kept, counters["received"], counters["invalid"]) == (2, 3, 2)
