"""GET /events narrowed by source and by a received_at window, newest first, through the real api."""

from __future__ import annotations

from typing import Any

import httpx
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import settled, start_pipeline
from tests.harness.processes import Deployment, Processes, event_ids


def event(event_id: str, topic: str, source: str) -> dict[str, Any]:
    return {"topic": topic, "event_id": event_id, "timestamp": "2026-05-01T08:00:00Z", "source": source}


def ids(deployment: Deployment, **params: Any) -> list[str]:
    return event_ids(deployment, 2, params)


async def test_events_filter_by_source_and_received_at_newest_first_with_paging(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        first = [event("a1", "f.orders", "web"), event("a2", "f.auth", "api"), event("a3", "f.orders", "api")]
        assert client.post("/publish", json=first).status_code == 200
        await settled(deployment, amqp, 3)
        second = [
            event("b1", "f.orders", "api"),
            event("b2", "f.orders", "web"),
            event("b3", "f.auth", "api"),
        ]
        assert client.post("/publish", json=second).status_code == 200
        await settled(deployment, amqp, 6)
        stored = client.get("/events", params={"limit": 10}).json()
    boundary = stored[3]["received_at"]
    assert all(e["received_at"] < boundary for e in stored[:3])

    def where(**match: str) -> list[str]:
        """The stored order (the shim sends one envelope per topic), narrowed as the api should."""
        return [e["event_id"] for e in stored if all(e[k] == v for k, v in match.items())]

    early = [e["event_id"] for e in stored[:3]]
    late = [e["event_id"] for e in stored[3:]]
    assert sorted(early) == ["a1", "a2", "a3"] and sorted(late) == ["b1", "b2", "b3"]
    assert ids(deployment, source="api") == where(source="api")
    assert (
        ids(deployment, source="api", topic="f.orders")
        == where(source="api", topic="f.orders")
        == ["a3", "b1"]
    )
    assert ids(deployment, since=boundary) == late
    assert ids(deployment, until=boundary) == early
    assert ids(deployment, since=boundary, source="web", topic="f.orders") == ["b2"]
    assert ids(deployment, order="desc") == (early + late)[::-1]
    assert ids(deployment, order="desc", source="api", until=boundary) == [
        i for i in early[::-1] if i in ("a2", "a3")
    ]
    # An offset is honoured: the same instant written in another zone selects the same events.
    shifted = boundary.replace("Z", "+00:00")
    assert ids(deployment, since=shifted) == late
    with httpx.Client(base_url=deployment.api_url, timeout=10) as client:
        assert client.get("/events", params={"since": "yesterday"}).status_code == 422
        assert client.get("/events", params={"order": "sideways"}).status_code == 422
