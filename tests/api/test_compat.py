"""API_COMPAT profiles against the real broker and consumer: each shapes the answers, and each passes the
same round trip as the default (publish every body shape, duplicates, paging, one event, stats, info)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import settled, start_pipeline
from tests.harness.processes import Deployment, Processes

PROFILES = ("default", "seed003", "seed004")


def event(event_id: str, topic: str = "compat.a") -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-05-01T08:00:00+02:00",
        "source": "compat-client",
        "payload": {"id": event_id},
    }


def stored(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "timestamp": "2026-05-01T06:00:00Z"}


def publish_answer(profile: str, n: int, stored_before: int = 0) -> dict[str, Any]:
    """A plain publish's answer: seed003 and seed004 wait for the store by default (PUBLISH_WAIT)."""
    if profile == "seed004":
        return {
            "status": "success",
            "message": f"Processed {n} events",
            "details": {
                "accepted": n - stored_before,
                "rejected": stored_before,
                "duplicates_immediate": stored_before,
            },
        }
    plain = {"status": "accepted", "received": n, "accepted": n, "rejected": 0, "enqueued": n, "count": n}
    if profile == "seed003":
        return {**plain, "stored": n, "new": n - stored_before, "duplicates": stored_before, "pending": 0}
    return plain


def events_of(profile: str, body: Any) -> list[dict[str, Any]]:
    """The events of one GET /events answer in the order the profile lists them, shaped as the default."""
    if profile == "default":
        assert isinstance(body, list)
        return body
    if profile == "seed003":
        assert set(body) == {"events"}
        events: list[dict[str, Any]] = body["events"]
        return events
    assert set(body) == {"status", "count", "events"}
    assert body["status"] == "success"
    assert body["count"] == len(body["events"])
    out = []
    for item in body["events"]:
        assert item.pop("processed_at") == item["received_at"]
        out.append(item)
    return out


def read_all(client: httpx.Client, profile: str, url: str) -> tuple[list[dict[str, Any]], int]:
    """Every event by following the Link header; returns them and how many pages it took."""
    collected: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.text
        collected += events_of(profile, response.json())
        next_url = response.links.get("next", {}).get("url")
        pages += 1
    return collected, pages


@pytest.mark.parametrize("profile", PROFILES)
async def test_every_profile_passes_the_same_round_trip(
    procs: Processes, amqp: AbstractRobustConnection, profile: str
) -> None:
    deployment: Deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"API_COMPAT": profile})
    first = [event("e1"), event("e2", "compat.b"), event("e3")]
    bodies: list[tuple[str, Any, int, int]] = [
        ("/publish", first, 3, 0),
        ("/events", {"events": [event("e4"), event("tenant/5", "compat.b")]}, 2, 0),
        ("/publish", {"events": event("e6")}, 1, 0),
        ("/events", event("e1"), 1, 1),  # a duplicate, stored before it was sent
        ("/publish", [], 0, 0),
    ]
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        for path, body, n, before in bodies:
            answer = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
            expected = publish_answer(profile, n, before)
            assert (answer.status_code, answer.json()) == (200, expected), (path, body)
        bad = client.post("/publish", json=[event("ok"), {**event("x"), "topic": "a b"}])
        assert bad.status_code == 422
        assert [item["loc"] for item in bad.json()["detail"]] == [["body", 1, "topic"]]

        counters = await settled(deployment, amqp, 7)
        assert counters == {
            "received": 7,
            "unique_processed": 6,
            "duplicate_dropped": 1,
            "invalid": 0,
            "conflicts": 0,
        }

        everything, _ = read_all(client, profile, "/events?limit=1000")
        in_store_order = everything[::-1] if profile == "seed004" else everything
        received_at = [e.pop("received_at") for e in in_store_order]
        assert all(stamp.endswith("Z") for stamp in received_at)
        assert received_at == sorted(received_at)
        expected = [event(i) for i in ("e1", "e3")] + [event("e2", "compat.b")]
        expected += [event("e4"), event("tenant/5", "compat.b"), event("e6")]
        # A request's events go out grouped by topic, so within a request the order is per topic.
        assert sorted(in_store_order, key=lambda e: e["event_id"]) == sorted(
            map(stored, expected), key=lambda e: e["event_id"]
        )
        assert [e["event_id"] for e in in_store_order][-1] == "e6"

        paged, pages = read_all(client, profile, "/events?limit=2")
        assert pages == 3
        assert [e["event_id"] for e in paged] == [e["event_id"] for e in everything]
        only_b, _ = read_all(client, profile, "/events?topic=compat.b&limit=1")
        assert [e["event_id"] for e in only_b] == [
            e["event_id"] for e in everything if e["topic"] == "compat.b"
        ]
        assert events_of(profile, client.get("/events?topic=nothing.here").json()) == []

        one = client.get("/events/compat.b/tenant/5")
        assert one.status_code == 200
        assert {k: v for k, v in one.json().items() if k != "received_at"} == stored(
            event("tenant/5", "compat.b")
        )
        assert client.get("/events/compat.a/never").status_code == 404

        stats = client.get("/stats").json()
        assert {k: stats[k] for k in counters} == counters
        assert (stats["unique_rate"], stats["duplicate_rate"]) == (85.71, 14.29)
        assert stats["topic_counts"] == {"compat.a": 4, "compat.b": 2}
        if profile == "seed004":
            assert stats["topics"] == {"compat.a": 4, "compat.b": 2}
        else:
            assert stats["topics"] == ["compat.a", "compat.b"]
        if profile == "seed003":
            # Milliseconds: an integer about a thousand times uptime_seconds.
            assert isinstance(stats["uptime"], int)
            assert abs(stats["uptime"] - stats["uptime_seconds"] * 1000) < 5_000
        else:
            assert stats["uptime"] == pytest.approx(stats["uptime_seconds"], abs=5)
        info = client.get("/info").json()
        assert (info["api_compat"], info["total_unique_events"]) == (profile, 6)
        assert client.get("/health").json()["status"] == "healthy"
        spec = client.get("/openapi.json").json()
        ok = spec["paths"]["/events"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {
            "default": {"type": "array", "items": {"$ref": "#/components/schemas/StoredEvent"}},
            "seed003": {"$ref": "#/components/schemas/EventsWrapped"},
            "seed004": {"$ref": "#/components/schemas/EventsPageSeed004"},
        }[profile] | ({"title": ok["title"]} if "title" in ok else {})


def test_an_unknown_profile_stops_the_api_with_an_error_naming_api_compat(procs: Processes) -> None:
    api = procs.api(API_COMPAT="seed999")

    assert api.wait(30) == 2
    assert "API_COMPAT must be one of default, seed003, seed004; got 'seed999'" in api.output()
