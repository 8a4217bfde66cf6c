"""Writer.apply on both backends: one transaction per batch with the events, dedup keys, exact counters."""

from __future__ import annotations

import random
from typing import Any

import pytest

from contract.event import Event
from store import BatchResult, Message, Writer, open_writer
from tests.harness.stores import (
    Peek,
    StoreSettings,
    consumer_state,
    counted_per_topic,
    counters,
    stored_count,
    stored_keys,
    stored_payload,
    topic_counts,
)

ZERO = {"received": 0, "unique_processed": 0, "duplicate_dropped": 0, "invalid": 0, "conflicts": 0}


def event(event_id: str, topic: str = "orders", **payload: Any) -> Event:
    return Event(
        topic=topic,
        event_id=event_id,
        timestamp="2026-11-22T10:15:00Z",
        source="test",
        payload=payload,
    )


async def test_a_new_store_has_every_counter_at_zero(writer: Writer, peek: Peek) -> None:
    assert await counters(peek) == ZERO


async def test_new_events_are_stored_and_counted(writer: Writer, peek: Peek) -> None:
    result = await writer.apply([[event("a"), event("b")], [event("c")]])

    assert result == BatchResult(received=3, unique_processed=3)
    assert await counters(peek) == {**ZERO, "received": 3, "unique_processed": 3}
    assert await stored_count(peek) == 3


async def test_a_stored_event_keeps_every_field(writer: Writer, peek: Peek) -> None:
    await writer.apply([[event("a", topic="billing", amount=42.5, tags=["x"])]])

    rows = await peek.rows("SELECT topic, event_id, timestamp, source, payload FROM events")
    expected = event("a", topic="billing", amount=42.5, tags=["x"])
    assert rows == [("billing", "a", "2026-11-22T10:15:00Z", "test", expected.payload_json())]


async def test_a_duplicate_across_batches_is_counted_and_not_stored_twice(writer: Writer, peek: Peek) -> None:
    await writer.apply([[event("a")]])

    result = await writer.apply([[event("a")]])

    assert result == BatchResult(received=1, duplicate_dropped=1)
    assert await counters(peek) == {**ZERO, "received": 2, "unique_processed": 1, "duplicate_dropped": 1}
    assert await stored_count(peek) == 1


async def test_a_duplicate_in_one_batch_is_counted_once(writer: Writer, peek: Peek) -> None:
    result = await writer.apply([[event("a")], [event("a")], [event("b"), event("a")]])

    assert result == BatchResult(received=4, unique_processed=2, duplicate_dropped=2)
    assert await stored_count(peek) == 2


async def test_a_duplicate_in_one_envelope_is_counted_once(writer: Writer, peek: Peek) -> None:
    result = await writer.apply([[event("a"), event("a")]])

    assert result == BatchResult(received=2, unique_processed=1, duplicate_dropped=1)
    assert await stored_count(peek) == 1


async def test_the_same_event_id_under_another_topic_is_a_different_event(writer: Writer, peek: Peek) -> None:
    result = await writer.apply([[event("a", topic="orders")], [event("a", topic="payments")]])

    assert result == BatchResult(received=2, unique_processed=2)
    assert await topic_counts(peek) == {"orders": 1, "payments": 1}


async def test_an_identical_resend_is_a_duplicate_but_not_a_conflict(writer: Writer) -> None:
    await writer.apply([[event("a", amount=1)]])

    assert await writer.apply([[event("a", amount=1)]]) == BatchResult(received=1, duplicate_dropped=1)


async def test_a_resend_with_its_payload_keys_reordered_is_not_a_conflict(writer: Writer) -> None:
    await writer.apply([[event("a", x=1, y=2)]])

    assert await writer.apply([[event("a", y=2, x=1)]]) == BatchResult(received=1, duplicate_dropped=1)


async def test_a_reused_key_with_another_payload_is_a_duplicate_and_a_conflict_and_the_first_wins(
    writer: Writer, peek: Peek
) -> None:
    await writer.apply([[event("a", amount=1)]])

    result = await writer.apply([[event("a", amount=2)]])

    assert result == BatchResult(received=1, duplicate_dropped=1, conflicts=1)
    assert await counters(peek) == {
        **ZERO,
        "received": 2,
        "unique_processed": 1,
        "duplicate_dropped": 1,
        "conflicts": 1,
    }
    assert await stored_payload(peek, "orders", "a") == '{"amount":1}'


async def test_a_conflict_within_one_batch_keeps_the_first_payload(writer: Writer, peek: Peek) -> None:
    result = await writer.apply([[event("a", amount=1)], [event("a", amount=2)], [event("a", amount=1)]])

    assert result == BatchResult(received=3, unique_processed=1, duplicate_dropped=2, conflicts=1)
    assert await stored_payload(peek, "orders", "a") == '{"amount":1}'


async def test_repeats_of_a_stored_key_in_one_batch_are_compared_with_the_stored_copy(
    writer: Writer, peek: Peek
) -> None:
    await writer.apply([[event("a", amount=1)]])

    result = await writer.apply([[event("a", amount=2)], [event("a", amount=1)], [event("a", amount=2)]])

    assert result == BatchResult(received=3, duplicate_dropped=3, conflicts=2)
    assert await stored_payload(peek, "orders", "a") == '{"amount":1}'


async def test_an_invalid_message_counts_once_as_invalid_and_received(writer: Writer, peek: Peek) -> None:
    result = await writer.apply([None])

    assert result == BatchResult(received=1, invalid=1)
    assert await counters(peek) == {**ZERO, "received": 1, "invalid": 1}
    assert await stored_count(peek) == 0


async def test_invalid_messages_mixed_with_valid_ones_are_each_counted_once(writer: Writer) -> None:
    result = await writer.apply([None, [event("a"), event("b")], None])

    assert result == BatchResult(received=4, unique_processed=2, invalid=2)


async def test_an_empty_envelope_counts_nothing(writer: Writer, peek: Peek) -> None:
    assert await writer.apply([[]]) == BatchResult()
    assert await counters(peek) == ZERO
    assert await stored_count(peek) == 0


async def test_an_empty_batch_counts_nothing(writer: Writer, peek: Peek) -> None:
    assert await writer.apply([]) == BatchResult()
    assert await counters(peek) == ZERO


async def test_a_commit_records_when_it_happened(writer: Writer, peek: Peek) -> None:
    await writer.apply([[event("a")]])

    assert (await consumer_state(peek))["last_commit_at"].endswith("Z")


async def test_a_start_records_when_and_with_which_durability(writer: Writer, peek: Peek) -> None:
    await writer.record_start("2026-11-22T10:00:00Z")

    state = await consumer_state(peek)
    durability = await writer.durability()
    assert state["started_at"] == "2026-11-22T10:00:00Z"
    assert durability.durable is True
    assert durability.warning is None
    assert {k: state[k] for k in durability.settings} == durability.settings
    if writer.backend == "sqlite":
        assert durability.settings == {"journal_mode": "wal", "synchronous": "FULL"}
    else:
        assert durability.settings == {"synchronous_commit": "on", "fsync": "on"}


async def test_topic_counts_equal_the_stored_events_per_topic(writer: Writer, peek: Peek) -> None:
    await writer.apply([[event("a", topic="orders"), event("b", topic="orders")], [event("c", topic="auth")]])
    await writer.apply(
        [[event("a", topic="orders")], [event("d", topic="auth"), event("e", topic="billing")]]
    )

    assert await topic_counts(peek) == await counted_per_topic(peek) == {"orders": 2, "auth": 2, "billing": 1}


def random_batches(seed: int) -> list[list[Message]]:
    """20 batches of messages drawing from a small key space, so keys repeat within and across batches."""
    rng = random.Random(seed)
    topics = ["orders", "payments", "auth", "search"]
    batches: list[list[Message]] = []
    for _ in range(20):
        messages: list[Message] = []
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
async def test_counters_obey_the_invariant_after_a_random_mix(writer: Writer, peek: Peek, seed: int) -> None:
    batches = random_batches(seed)
    sent = [item for batch in batches for message in batch if message is not None for item in message]
    invalid = sum(message is None for batch in batches for message in batch)
    assert len(sent) > 200

    total = BatchResult()
    for batch in batches:
        total.add(await writer.apply(batch))
        c = await counters(peek)
        assert c["received"] == c["unique_processed"] + c["duplicate_dropped"] + c["invalid"]
        assert c["unique_processed"] == await stored_count(peek)

    unique_keys = {item.key() for item in sent}
    final = await counters(peek)
    assert final == {
        "received": len(sent) + invalid,
        "unique_processed": len(unique_keys),
        "duplicate_dropped": len(sent) - len(unique_keys),
        "invalid": invalid,
        "conflicts": final["conflicts"],
    }
    assert final == {
        "received": total.received,
        "unique_processed": total.unique_processed,
        "duplicate_dropped": total.duplicate_dropped,
        "invalid": total.invalid,
        "conflicts": total.conflicts,
    }
    assert await stored_keys(peek) == unique_keys
    assert await topic_counts(peek) == await counted_per_topic(peek)


async def test_conflicts_in_a_random_mix_are_the_resends_whose_content_differs_from_the_first(
    writer: Writer, peek: Peek
) -> None:
    batches = random_batches(7)
    first: dict[tuple[str, str], bytes] = {}
    first_payload: dict[tuple[str, str], str] = {}
    expected_conflicts = 0
    for batch in batches:
        for message in batch:
            for item in message or []:
                if item.key() not in first:
                    first[item.key()] = item.content_hash()
                    first_payload[item.key()] = item.payload_json()
                elif first[item.key()] != item.content_hash():
                    expected_conflicts += 1
    assert expected_conflicts > 0

    for batch in batches:
        await writer.apply(batch)

    assert (await counters(peek))["conflicts"] == expected_conflicts
    stored = {(r[0], r[1]): r[2] for r in await peek.rows("SELECT topic, event_id, payload FROM events")}
    assert stored == first_payload


async def test_counters_events_and_topics_survive_closing_and_reopening(
    settings: StoreSettings, peek: Peek
) -> None:
    writer = await open_writer(settings)
    await writer.apply([[event("a"), event("b", topic="auth")], None, [event("a", amount=9)]])
    before = (await counters(peek), await stored_count(peek), await topic_counts(peek))
    await writer.close()

    reopened = await open_writer(settings)
    try:
        assert (await counters(peek), await stored_count(peek), await topic_counts(peek)) == before
        assert before[0] == {
            "received": 4,
            "unique_processed": 2,
            "duplicate_dropped": 1,
            "invalid": 1,
            "conflicts": 1,
        }
        result = await reopened.apply([[event("a"), event("c")]])
        assert result == BatchResult(received=2, unique_processed=1, duplicate_dropped=1)
        assert (await counters(peek))["received"] == 6
    finally:
        await reopened.close()


async def test_a_batch_failing_before_commit_leaves_no_trace_and_the_next_one_applies(
    settings: StoreSettings, peek: Peek
) -> None:
    failing = [True]

    def before_commit() -> None:
        if failing[0]:
            raise OSError(5, "disk I/O error")

    writer = await open_writer(settings, before_commit)
    try:
        failing[0] = False
        await writer.apply([[event("a")]])
        before = (await counters(peek), await stored_count(peek), await topic_counts(peek))
        failing[0] = True
        batch: list[Message] = [[event("b"), event("c", topic="auth"), event("a", amount=5)], None]

        from store import StoreError

        with pytest.raises(StoreError, match="disk I/O error"):
            await writer.apply(batch)

        assert (await counters(peek), await stored_count(peek), await topic_counts(peek)) == before
        failing[0] = False
        assert await writer.apply(batch) == BatchResult(
            received=4, unique_processed=2, duplicate_dropped=1, invalid=1, conflicts=1
        )
    finally:
        await writer.close()
