"""The HTTP contract's additions for earlier aggregators' clients, against the real broker and consumer:
`enqueued`/`count`, POST /events as an alias of POST /publish, `/stats` rates, GET /info."""

from __future__ import annotations

import json
from typing import Any

import httpx
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import settled, start_pipeline
from tests.harness.processes import Deployment, Processes, all_events, api_get

ORDER = ("status", "received", "accepted", "rejected", "enqueued", "count")


def event(event_id: str, topic: str = "additions", **extra: Any) -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-05-01T08:00:00Z",
        "source": "http-client",
        "payload": {"id": event_id},
        **extra,
    }


def post(
    deployment: Deployment, path: str, body: Any = None, *, raw: bytes | None = None, **headers: str
) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        return client.post(path, content=content, headers={"content-type": "application/json", **headers})


def accepted(n: int) -> dict[str, Any]:
    return {"status": "accepted", "received": n, "accepted": n, "rejected": 0, "enqueued": n, "count": n}


async def test_post_events_is_publish_under_another_name_with_the_same_answers_and_errors(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"MAX_EVENTS_PER_REQUEST": "3", "API_KEY": "k"})
    key = {"x-api-key": "k"}
    bodies = [event("one"), [event("a1"), event("a2")], {"events": [event("w1")]}, {"events": event("w2")}]

    for path in ("/publish", "/events"):
        answers = [post(deployment, path, body, **key) for body in bodies]
        assert [(a.status_code, a.json()) for a in answers] == [(200, accepted(n)) for n in (1, 2, 1, 1)], (
            path
        )
        assert post(deployment, path, event("no-key")).status_code == 401, path
        bad = post(deployment, path, [event("ok"), event("bad", timestamp="never")], **key)
        assert bad.status_code == 422, path
        assert [item["loc"] for item in bad.json()["detail"]] == [["body", 1, "timestamp"]], path
        too_many = post(deployment, path, [event(f"m{i}") for i in range(4)], **key)
        assert (too_many.status_code, too_many.json()) == (
            413,
            {"detail": "4 events in one request; the limit is 3"},
        ), path
        form = post(deployment, path, raw=b"x=1", **{"content-type": "text/plain"}, **key)
        assert form.status_code == 415, path

    # Both paths published the same five events: each stored once, the second round all duplicates.
    assert await settled(deployment, amqp, 10) == {
        "received": 10,
        "unique_processed": 5,
        "duplicate_dropped": 5,
        "invalid": 0,
        "conflicts": 0,
    }
    assert sorted(e["event_id"] for e in all_events(deployment)) == ["a1", "a2", "one", "w1", "w2"]
    spec = api_get(deployment, "/openapi.json").json()
    alias = spec["paths"]["/events"]["post"]
    assert alias["summary"] == "Alias of POST /publish"
    assert alias["requestBody"] == spec["paths"]["/publish"]["post"]["requestBody"]
    assert alias["responses"] == spec["paths"]["/publish"]["post"]["responses"]


async def test_stats_rates_are_percentages_of_received_and_info_counts_the_stored_events(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    empty = api_get(deployment, "/stats").json()
    assert (empty["unique_rate"], empty["duplicate_rate"]) == (0, 0)
    before = api_get(deployment, "/info").json()
    assert before.pop("uptime_seconds") > 0
    assert before.pop("started_at").endswith("Z")
    assert before == {
        "service": "eventagg-api",
        "version": "0.1.0",
        "api_compat": "default",
        "total_unique_events": 0,
        "total_received": 0,
        "topics": 0,
        "store": "ok",
    }

    assert (
        post(deployment, "/publish", [event("x"), event("y"), event("z", topic="other")]).status_code == 200
    )
    assert post(deployment, "/publish", [event("x"), event("y"), event("x")]).status_code == 200
    await settled(deployment, amqp, 6)

    stats = api_get(deployment, "/stats").json()
    assert {k: stats[k] for k in ("received", "unique_processed", "duplicate_dropped")} == {
        "received": 6,
        "unique_processed": 3,
        "duplicate_dropped": 3,
    }
    assert (stats["unique_rate"], stats["duplicate_rate"]) == (50.0, 50.0)
    assert post(deployment, "/publish", [event("w")]).status_code == 200
    await settled(deployment, amqp, 7)
    stats = api_get(deployment, "/stats").json()
    # 4 of 7 and 3 of 7, rounded to two decimals.
    assert (stats["unique_rate"], stats["duplicate_rate"]) == (57.14, 42.86)
    info = api_get(deployment, "/info").json()
    assert (info["total_unique_events"], info["total_received"], info["topics"]) == (4, 7, 2)
    assert info["total_unique_events"] == len(all_events(deployment))


async def test_stats_lists_topics_in_the_order_they_were_first_stored(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)

    # One request at a time, each settled before the next, so the first-seen order is known.
    for received, topic in enumerate(["zulu.first", "alpha.second", "mike.third", "alpha.second"], start=1):
        assert post(deployment, "/publish", event(f"{topic}-{received}", topic=topic)).status_code == 200
        await settled(deployment, amqp, received)

    stats = api_get(deployment, "/stats").json()
    assert stats["topics"] == ["zulu.first", "alpha.second", "mike.third"]
    assert list(stats["topic_counts"].items()) == [("zulu.first", 1), ("alpha.second", 2), ("mike.third", 1)]
