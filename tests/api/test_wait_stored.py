"""POST /publish?wait=stored against the real broker and consumer: it answers once the request's own
messages are committed, with exactly how many events it stored and how many were stored already."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.pipeline import counters, settled, start_pipeline
from tests.harness.processes import Deployment, Processes, all_events, api_get
from tests.harness.waiting import eventually

STORED_FIRST = [("wait.a", "a"), ("wait.a", "b"), ("wait.b", "c")]
COUNTERS_ZERO = {"received": 0, "unique_processed": 0, "duplicate_dropped": 0, "invalid": 0, "conflicts": 0}


def event(event_id: str, topic: str = "wait.a") -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-05-01T08:00:00Z",
        "source": "waiting-client",
        "payload": {"id": event_id},
    }


def post(deployment: Deployment, path: str, body: Any) -> httpx.Response:
    with httpx.Client(base_url=deployment.api_url, timeout=60) as client:
        return client.post(path, params={"wait": "stored"}, content=json.dumps(body).encode())


def answer(
    profile: str, n: int, new: int, duplicates: int, pending: int = 0, stored_before: int | None = None
) -> dict[str, Any]:
    if profile == "seed004":
        # That aggregator's count: events stored before the request arrived (by default, the duplicates).
        before = duplicates if stored_before is None else stored_before
        details: dict[str, Any] = {
            "accepted": n - before,
            "rejected": before,
            "duplicates_immediate": before,
        }
        message = f"Processed {n} events"
        if pending:
            details["pending"] = pending
            message += f"; {pending} confirmed by the broker but not stored yet"
        return {"status": "success", "message": message, "details": details}
    return {
        "status": "accepted",
        "received": n,
        "accepted": n,
        "rejected": 0,
        "enqueued": n,
        "count": n,
        "stored": n - pending,
        "new": new,
        "duplicates": duplicates,
        "pending": pending,
    }


def expect(**changes: int) -> dict[str, int]:
    return {**COUNTERS_ZERO, **changes}


@pytest.mark.parametrize("profile", ["default", "seed003", "seed004"])
async def test_a_waiting_publish_answers_with_its_events_already_stored_and_counted(
    procs: Processes, amqp: AbstractRobustConnection, profile: str
) -> None:
    deployment = procs.deployment
    # A deadline far beyond any answer here: a request that waits for it shows in the time it took.
    await start_pipeline(procs, amqp, api_env={"API_COMPAT": profile, "PUBLISH_TIMEOUT": "60"})

    first = post(deployment, "/publish", [event("a"), event("b"), event("c", "wait.b")])
    # No waiting on the test's side: the answer itself means stored and counted.
    assert (first.status_code, first.json()) == (200, answer(profile, 3, new=3, duplicates=0))
    assert counters(deployment) == expect(received=3, unique_processed=3)
    found = [api_get(deployment, f"/events/{t}/{i}").status_code for t, i in STORED_FIRST]
    assert found == [200, 200, 200]
    assert api_get(deployment, "/info").json()["total_unique_events"] == 3

    again = post(deployment, "/events", {"events": [event("a"), event("d", "wait.b"), event("d", "wait.b")]})
    # Two copies of d in one request: one stored, one a duplicate at the commit; seed004 counts both
    # accepted, as that aggregator did (neither was stored when the request arrived), and `a` rejected.
    assert (again.status_code, again.json()) == (
        200,
        answer(profile, 3, new=1, duplicates=2, stored_before=1),
    )
    assert counters(deployment) == expect(received=6, unique_processed=4, duplicate_dropped=2)

    started = time.monotonic()
    empty = post(deployment, "/publish", [])
    took = time.monotonic() - started
    assert (empty.status_code, empty.json()) == (200, answer(profile, 0, new=0, duplicates=0))
    assert took < 30, f"an empty waiting publish took {took:.1f}s: it waited for its deadline"
    invalid = post(deployment, "/publish", [event("e"), {**event("f"), "timestamp": "soon"}])
    assert invalid.status_code == 422
    # Nothing of the rejected request was published: a marker sent behind it is stored, the queue drains,
    # and the marker is the only event that arrived since.
    marker = post(deployment, "/publish", [event("marker", "wait.b")])
    assert (marker.status_code, marker.json()) == (200, answer(profile, 1, new=1, duplicates=0))
    assert await settled(deployment, amqp, 7) == expect(received=7, unique_processed=5, duplicate_dropped=2)
    assert api_get(deployment, "/events/wait.a/e").status_code == 404


@pytest.mark.backends("sqlite", "postgres")
async def test_twenty_identical_waiting_publishes_report_exactly_nineteen_duplicates(
    procs: Processes, amqp: AbstractRobustConnection, backend: str
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    body = json.dumps([event("the-one")]).encode()

    async with httpx.AsyncClient(base_url=deployment.api_url, timeout=60) as client:
        replies = await asyncio.gather(
            *(client.post("/publish", params={"wait": "stored"}, content=body) for _ in range(20))
        )
        # The moment the last reply is in, every copy is already counted.
        stats = (await client.get("/stats")).json()

    assert [r.status_code for r in replies] == [200] * 20
    bodies = [r.json() for r in replies]
    assert sum(b["new"] for b in bodies) == 1
    assert sum(b["duplicates"] for b in bodies) == 19
    assert sorted((b["new"], b["duplicates"], b["pending"]) for b in bodies) == [(0, 1, 0)] * 19 + [(1, 0, 0)]
    assert {k: stats[k] for k in COUNTERS_ZERO} == expect(
        received=20, unique_processed=1, duplicate_dropped=19
    )
    assert [e["event_id"] for e in all_events(deployment)] == ["the-one"]


@pytest.mark.backends("sqlite", "postgres")
async def test_with_the_consumer_stopped_a_waiting_publish_answers_202_in_time_and_the_events_follow(
    procs: Processes, amqp: AbstractRobustConnection, backend: str
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, with_consumer=False, api_env={"PUBLISH_TIMEOUT": "2"})

    started = time.monotonic()
    late = post(deployment, "/publish", [event("x"), event("y"), event("z", "wait.b")])
    took = time.monotonic() - started

    assert (late.status_code, late.json()) == (202, answer("default", 3, new=0, duplicates=0, pending=3))
    assert 2 <= took < 4, took
    assert api_get(deployment, "/events").json() == []

    procs.consumer()
    await eventually(lambda: counters(deployment)["unique_processed"] == 3, 30, message="stored")
    assert counters(deployment) == expect(received=3, unique_processed=3)
    assert {e["event_id"] for e in all_events(deployment)} == {"x", "y", "z"}
    resent = post(deployment, "/publish", [event("x"), event("y"), event("z", "wait.b")])
    assert (resent.status_code, resent.json()) == (200, answer("default", 3, new=0, duplicates=3))


async def test_the_publisher_cli_with_wait_stored_reports_new_and_already_stored_exactly(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)

    summary = procs.publish("--via", "http", "--wait-stored", "--count", "500", "--seed", "5")

    assert summary["exit_code"] == 0, summary
    assert summary["stored"] == {"new": 400, "duplicates": 100, "pending": 0}
    # Nothing to wait for: the CLI returned after the store had everything.
    assert counters(deployment) == expect(received=500, unique_processed=400, duplicate_dropped=100)
    usage = procs.start("publisher", "--wait-stored", "--count", "5")
    assert usage.wait(30) == 2
    assert "--wait-stored needs --via http" in usage.output()


async def test_an_event_id_of_255_characters_up_to_1020_bytes_is_published_and_stored_in_either_wait(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    # An event id may be 255 characters, which can be 1020 bytes of UTF-8; a lone event's message id is its
    # event id only where it fits an AMQP short string (255 bytes). Each event is published alone.
    deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"PUBLISH_TIMEOUT": "60"})
    waits = ("stored", "confirmed")
    ids = {wait: [(wait[0] + ch * 255)[:255] for ch in ("a", "é", "€", "😀")] for wait in waits}

    with httpx.Client(base_url=deployment.api_url, timeout=60) as client:
        replies = [
            client.post("/events", params={"wait": wait}, content=json.dumps([event(event_id)]).encode())
            for wait, event_ids in ids.items()
            for event_id in event_ids
        ]

    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]
    assert await settled(deployment, amqp, 8) == expect(received=8, unique_processed=8)
    assert {e["event_id"] for e in all_events(deployment)} == {i for group in ids.values() for i in group}


def receipt_metrics(deployment: Deployment) -> dict[str, float]:
    """The api's receipt reads of the store (all reasons), the awaited receipts found, by source, and its
    subscription to the commit notices."""
    text = api_get(deployment, "/metrics").text
    out = {"reads": 0.0, "notice": 0.0, "store": 0.0, "up": 0.0, "subscriptions": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "eventagg_commit_notices_up":
                out["up"] = sample.value
            elif sample.name == "eventagg_commit_notice_subscriptions_total":
                out["subscriptions"] = sample.value
            elif sample.name == "eventagg_receipt_reads_total":
                out["reads"] += sample.value
            elif sample.name == "eventagg_receipts_found_total":
                out[sample.labels["source"]] = sample.value
    return out


@pytest.mark.backends("sqlite", "postgres")
async def test_a_waiting_publish_answers_from_the_commit_notice_without_reading_the_store(
    procs: Processes, amqp: AbstractRobustConnection, backend: str
) -> None:
    deployment = procs.deployment
    # PUBLISH_TIMEOUT is also how long after its subscription came up the api reads the store once for every
    # new request anyway (a commit may have come before the subscription): kept short here.
    await start_pipeline(procs, amqp, api_env={"PUBLISH_TIMEOUT": "3"})
    await eventually(lambda: receipt_metrics(deployment)["up"] == 1, 30, message="the api's notices up")
    up_by = time.monotonic()
    window = "past the replay window: the subscription up for 3 s"
    await eventually(lambda: time.monotonic() - up_by >= 3, 10, message=window)
    before = receipt_metrics(deployment)
    assert (before["reads"], before["notice"], before["store"], before["subscriptions"]) == (0, 0, 0, 1)

    first = post(deployment, "/publish", [event("a"), event("b"), event("c", "wait.b")])
    again = post(deployment, "/events", {"events": [event("a"), event("d", "wait.b"), event("d", "wait.b")]})

    assert (first.status_code, first.json()) == (200, answer("default", 3, new=3, duplicates=0))
    assert (again.status_code, again.json()) == (200, answer("default", 3, new=1, duplicates=2))
    after = receipt_metrics(deployment)
    # Two messages each (one per topic): all four receipts' figures came with the notices, none from a read.
    assert after["notice"] - before["notice"] == 4
    assert (after["store"], after["reads"]) == (before["store"], before["reads"])
    assert counters(deployment)["unique_processed"] == 4
    assert after["subscriptions"] == 1  # never lost and made again, which would have opened a new window
