"""Duplicates and conflicts per topic, on both backends: moved with the global counters, summing to them."""

from __future__ import annotations

from typing import Any

from contract.event import Event
from store import Reader, Writer


def event(event_id: str, topic: str, **payload: Any) -> Event:
    return Event(
        topic=topic, event_id=event_id, timestamp="2026-11-22T10:15:00Z", source="s", payload=payload
    )


async def test_duplicates_and_conflicts_are_counted_per_topic(writer: Writer, reader: Reader) -> None:
    await writer.apply([[event("a", "orders"), event("b", "orders")], [event("c", "auth")]])
    await writer.apply(
        [
            [event("a", "orders")],  # a verbatim re-send
            [event("b", "orders", changed=True)],  # same key, other content: a conflict too
            [event("c", "auth"), event("c", "auth")],
            [event("d", "auth"), event("d", "auth", other=1)],  # a conflict inside one batch
            [event("e", "billing")],
        ]
    )

    snapshot = await reader.snapshot()
    assert snapshot.topic_counts == {"orders": 2, "auth": 2, "billing": 1}
    assert snapshot.topic_duplicates == {"orders": 2, "auth": 3, "billing": 0}
    assert snapshot.topic_conflicts == {"orders": 1, "auth": 1, "billing": 0}
    assert sum(snapshot.topic_duplicates.values()) == snapshot.counters["duplicate_dropped"]
    assert sum(snapshot.topic_conflicts.values()) == snapshot.counters["conflicts"]
