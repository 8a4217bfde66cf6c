"""The HTTP side against real processes: the publish shim (confirms, validation, limits, key) and reads."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from publisher.load import generate
from tests.harness.cleanups import Cleanups
from tests.harness.pipeline import COUNTERS, counters, settled, start_pipeline
from tests.harness.probes import queue_depth
from tests.harness.processes import Deployment, Processes, all_events, api_get, free_port
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually

# Every test here runs on both store backends, but those whose subject the api settles before the broker or
# the store is involved (validation, limits, keys, the OpenAPI document).
pytestmark = pytest.mark.backends("sqlite", "postgres")


def event(event_id: str, topic: str = "http.test", **extra: Any) -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-05-01T08:00:00Z",
        "source": "http-client",
        "payload": {"id": event_id},
        **extra,
    }


def post(
    deployment: Deployment, body: Any = None, *, raw: bytes | None = None, **headers: str
) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        return client.post(
            "/publish", content=content, headers={"content-type": "application/json", **headers}
        )


async def test_every_accepted_body_shape_is_published_and_confirmed(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    bodies = [
        event("one"),
        [event("arr-1"), event("arr-2", topic="http.other")],
        {"events": [event("wrapped-1"), event("wrapped-2")]},
        {"events": event("wrapped-single")},
        [],
        {"events": []},
    ]
    answers = [post(deployment, body) for body in bodies]

    assert [a.status_code for a in answers] == [200] * 6
    assert [a.json() for a in answers] == [
        {"status": "accepted", "received": n, "accepted": n, "rejected": 0, "enqueued": n, "count": n}
        for n in (1, 2, 2, 1, 0, 0)
    ]
    assert await settled(deployment, amqp, 6) == {
        "received": 6,
        "unique_processed": 6,
        "duplicate_dropped": 0,
        "invalid": 0,
        "conflicts": 0,
    }
    assert {e["event_id"] for e in all_events(deployment)} == {
        "one",
        "arr-1",
        "arr-2",
        "wrapped-1",
        "wrapped-2",
        "wrapped-single",
    }
    # A client re-sending after a lost answer changes nothing but the duplicate count.
    assert post(deployment, bodies[1]).status_code == 200
    assert await settled(deployment, amqp, 8) == {
        "received": 8,
        "unique_processed": 6,
        "duplicate_dropped": 2,
        "invalid": 0,
        "conflicts": 0,
    }


@pytest.mark.backends("sqlite")
async def test_an_invalid_request_is_rejected_whole_with_item_and_field_named(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    bad_second = [event("good-1"), event("bad", timestamp="not a time"), {"topic": "x"}]

    answer = post(deployment, bad_second)

    assert answer.status_code == 422
    detail = answer.json()["detail"]
    locs = [tuple(item["loc"]) for item in detail]
    assert ("body", 1, "timestamp") in locs
    assert ("body", 2, "event_id") in locs
    assert ("body", 2, "source") in locs
    assert all(item["msg"] for item in detail)
    wrapped = post(deployment, {"events": [event("w-good"), event("w-bad", topic="a b")]})
    assert wrapped.status_code == 422
    assert [tuple(item["loc"]) for item in wrapped.json()["detail"]] == [("body", "events", 1, "topic")]
    single = post(deployment, event("s-bad", payload=[1]))
    assert single.status_code == 422
    assert [tuple(item["loc"]) for item in single.json()["detail"]] == [("body", "payload")]

    malformed = post(deployment, raw=b'{"topic": ')
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["body"]
    for other_shape in (b"42", b'"text"', b"null", b'{"events": 5}', b"[1, 2]"):
        assert post(deployment, raw=other_shape).status_code == 422, other_shape
    wrong_type = post(deployment, raw=b"topic=x", **{"content-type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415
    assert "application/json" in wrong_type.json()["detail"]

    # Nothing of the rejected requests was published: only this marker event ever arrives.
    assert post(deployment, event("marker")).status_code == 200
    assert await settled(deployment, amqp, 1) == {
        "received": 1,
        "unique_processed": 1,
        "duplicate_dropped": 0,
        "invalid": 0,
        "conflicts": 0,
    }
    assert [e["event_id"] for e in all_events(deployment)] == ["marker"]
    assert await queue_depth(amqp, deployment.queue) == 0


@pytest.mark.backends("sqlite")
async def test_requests_past_the_limits_get_413_and_publish_nothing(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(
        procs,
        amqp,
        api_env=dict(MAX_EVENTS_PER_REQUEST="5", MAX_BODY_BYTES="20000", MAX_PAYLOAD_BYTES="1000"),
    )

    too_many = post(deployment, [event(f"many-{i}") for i in range(6)])
    too_big = post(deployment, [event("big-body", payload={"x": "y" * 30_000})])
    big_payload = post(deployment, [event("ok"), event("big-payload", payload={"x": "y" * 1500})])

    assert [r.status_code for r in (too_many, too_big, big_payload)] == [413, 413, 413]
    assert "limit is 5" in too_many.json()["detail"]
    assert "20000 bytes" in too_big.json()["detail"]
    assert "body.1.payload" in big_payload.json()["detail"]
    assert post(deployment, [event(f"fits-{i}") for i in range(5)]).status_code == 200
    assert await settled(deployment, amqp, 5) == {
        "received": 5,
        "unique_processed": 5,
        "duplicate_dropped": 0,
        "invalid": 0,
        "conflicts": 0,
    }


@pytest.mark.backends("sqlite")
async def test_an_api_key_guards_publishing_but_not_reads(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"API_KEY": "s3cret"})

    assert post(deployment, event("no-key")).status_code == 401
    assert post(deployment, event("wrong-key"), **{"x-api-key": "nope"}).status_code == 401
    assert post(deployment, event("keyed"), **{"x-api-key": "s3cret"}).status_code == 200
    assert post(deployment, event("bearer"), authorization="Bearer s3cret").status_code == 200
    assert api_get(deployment, "/events").status_code == 200
    await settled(deployment, amqp, 2)
    assert {e["event_id"] for e in all_events(deployment)} == {"keyed", "bearer"}


@pytest.mark.backends("sqlite")
async def test_reads_need_the_key_too_when_configured(procs: Processes) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, None, with_consumer=False, api_env={"API_KEY": "k", "API_KEY_READS": "true"})

    for path in ("/events", "/stats", "/events/t/e"):
        assert api_get(deployment, path).status_code == 401, path
    with httpx.Client(base_url=deployment.api_url, headers={"x-api-key": "k"}) as client:
        assert client.get("/events").json() == []
        assert client.get("/stats").status_code == 200
    # Health stays open: orchestrators probe it without credentials.
    assert api_get(deployment, "/health").status_code == 200


@pytest.mark.backends("sqlite")
async def test_every_kind_of_answer_reaches_the_client_head_requests_and_errors_included(
    procs: Processes,
) -> None:
    # The api writes a fixed-length response's head together with its body (api/http1.py); an answer
    # without a body to follow must still go out, on a connection that stays open for the next request.
    deployment = procs.deployment
    await start_pipeline(procs, None, with_consumer=False)
    with httpx.Client(base_url=deployment.api_url, timeout=5) as client:
        # The routes take GET (or POST) only, so HEAD is 405: an answer whose body never follows its head.
        for method, path, status in (
            ("HEAD", "/health", 405),
            ("HEAD", "/stats", 405),
            ("HEAD", "/publish", 405),
            ("GET", "/nowhere", 404),
        ):
            answer = client.request(method, path)
            assert answer.status_code == status, (method, path, answer.status_code)
            assert answer.headers.get("content-length") is not None, (method, path)
        assert client.get("/health").status_code == 200  # the same connection still works


async def test_broker_down_gives_503_on_publish_while_reads_keep_working(procs: Processes) -> None:
    deployment = procs.deployment
    nothing_there = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    procs.api(AMQP_URL=nothing_there, PUBLISH_TIMEOUT="1")
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api up")

    answer = post(deployment, event("while-down"))

    assert answer.status_code == 503
    assert "re-send" in answer.json()["detail"]
    health = api_get(deployment, "/health").json()
    assert health["status"] == "healthy"
    assert health["broker"]["status"] == "unreachable"
    assert health["store"]["status"] == "missing"
    assert api_get(deployment, "/events").json() == []
    stats = api_get(deployment, "/stats").json()
    assert {name: stats[name] for name in COUNTERS} == dict.fromkeys(COUNTERS, 0)
    assert stats["topics"] == [] and stats["topic_counts"] == {}
    assert stats["queue"]["messages"] is None


async def test_events_are_paged_oldest_first_with_a_link_header_exactly_when_more_follow(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    published = [event(f"page-{i:02d}", topic="pages.a" if i % 3 else "pages.b") for i in range(25)]
    published.append(event("tenant/7/order/1", topic="pages.a"))
    for start_at in range(0, len(published), 4):  # several requests, so several batches
        assert post(deployment, published[start_at : start_at + 4]).status_code == 200
    await settled(deployment, amqp, 26)

    with httpx.Client(base_url=deployment.api_url, timeout=10) as client:
        ids: list[str] = []
        url: str | None = "/events?limit=10"
        pages = 0
        while url:
            response = client.get(url)
            assert response.status_code == 200
            ids += [e["event_id"] for e in response.json()]
            url = response.links.get("next", {}).get("url")
            pages += 1
        assert pages == 3
        # A request's events go out grouped by topic, so the stored order is per request and per topic.
        assert sorted(ids) == sorted(e["event_id"] for e in published)
        last_full = client.get("/events?limit=26")
        assert "link" not in last_full.headers
        assert [e["event_id"] for e in last_full.json()] == ids
        only_b = client.get("/events", params={"topic": "pages.b"}).json()
        assert [e["event_id"] for e in only_b] == [
            i for i in ids if i in {e["event_id"] for e in published if e["topic"] == "pages.b"}
        ]
        assert client.get("/events", params={"topic": "no.such.topic"}).json() == []
        for bad in ({"limit": 1001}, {"limit": 0}, {"limit": "x"}, {"after": "garbage!"}):
            assert client.get("/events", params=bad).status_code == 422, bad
        one = client.get("/events/pages.a/tenant/7/order/1")
        assert one.status_code == 200
        assert one.json()["payload"] == {"id": "tenant/7/order/1"}
        assert one.json()["timestamp"] == "2026-05-01T08:00:00Z"
        assert set(one.json()) == {"topic", "event_id", "timestamp", "source", "payload", "received_at"}
        assert client.get("/events/pages.a/never-published").status_code == 404
        stats = client.get("/stats").json()
        # Both topics came in the first request, so which was stored first is up to the batch.
        assert sorted(stats["topics"]) == ["pages.a", "pages.b"]
        assert stats["topic_counts"] == {"pages.a": 17, "pages.b": 9}
        assert stats["uptime_seconds"] > 0 and stats["uptime"] > 0
        queue = {"name": deployment.queue, "messages": 0, "consumers": 1}

        def queue_read() -> dict[str, Any] | None:
            answer: dict[str, Any] = client.get("/stats").json()["queue"]
            age = answer.pop("age_seconds")
            # A cached reading says how old it is: at most the TTL, or 5 TTLs while a fresh one is taken.
            assert age is not None and 0 <= age <= 5 * 1.0 + 0.5, age
            return answer if answer == queue else None

        await eventually(queue_read, 10, message="queue probe")
        store = stats["store_info"]
        assert (store["durable"], store["warning"]) == (True, None), store
        if deployment.database_url:
            assert store["backend"] == "postgresql"
            assert (store["settings"]["synchronous_commit"], store["settings"]["fsync"]) == ("on", "on")
        else:
            assert store["backend"] == "sqlite"
            assert stats["consumer"]["synchronous"] == "FULL"
        assert stats["consumer"]["last_commit_at"]


async def test_the_publisher_cli_over_http_with_verify_gets_exact_counters(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)

    summary = procs.publish(
        "--via", "http", "--count", "5000", "--duplicates", "0.2", "--seed", "3", "--verify"
    )

    assert summary["exit_code"] == 0, summary
    assert summary["verify"]["ok"] is True
    assert counters(deployment) == {
        "received": 5000,
        "unique_processed": 4000,
        "duplicate_dropped": 1000,
        "invalid": 0,
        "conflicts": 0,
    }
    assert {(e["topic"], e["event_id"]) for e in all_events(deployment)} == {
        e.key() for e in generate(5000, 0.2, 8, 3).events
    }


async def test_verify_fails_with_a_clear_report_when_nothing_consumes(procs: Processes) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, None, with_consumer=False)

    summary = procs.publish("--count", "50", "--seed", "4", "--verify", "--verify-timeout", "2")

    assert summary["exit_code"] == 4
    assert summary["confirmed"] == 50
    assert summary["verify"]["ok"] is False
    assert "expected 50" in summary["verify"]["summary"]
    assert deployment.db_path.exists() is False


@pytest.mark.backends("sqlite")
def test_openapi_documents_every_endpoint_with_models(procs: Processes) -> None:
    import asyncio

    asyncio.run(start_pipeline(procs, None, with_consumer=False))
    spec = api_get(procs.deployment, "/openapi.json").json()

    assert set(spec["paths"]) >= {"/publish", "/events", "/events/{topic}/{event_id}", "/stats", "/health"}
    assert "Event" in spec["components"]["schemas"]
    body = spec["paths"]["/publish"]["post"]["requestBody"]["content"]["application/json"]
    assert len(body["schema"]["anyOf"]) == 3
    assert {"200", "401", "413", "415", "422", "503"} <= set(spec["paths"]["/publish"]["post"]["responses"])
    assert api_get(procs.deployment, "/docs").status_code == 200


async def test_no_confirm_within_the_timeout_gives_503_and_a_re_send_takes_effect_once(
    procs: Processes, amqp: AbstractRobustConnection, cleanups: Cleanups
) -> None:
    deployment = procs.deployment
    broker = urlsplit(deployment.amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672).start()
    cleanups.add(proxy.close)
    via_proxy = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    await start_pipeline(procs, amqp, api_env={"AMQP_URL": via_proxy, "PUBLISH_TIMEOUT": "1"})
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        stored = "/publish?wait=stored"
        assert client.post(stored, json=[event("warm")]).status_code == 200  # its channel open
        with proxy.frozen():
            answer = client.post(stored, json=[event("slow-3")])
            assert answer.status_code == 503, answer.text
            assert "did not confirm within 1s" in answer.json()["detail"]
        again = client.post(stored, json=[event("slow-3")])
        assert (again.status_code, again.json()["new"], again.json()["duplicates"]) == (200, 0, 1)
    with proxy.frozen():
        answer = post(deployment, [event("slow-1"), event("slow-2")])
        assert answer.status_code == 503
        assert "did not confirm within 1s" in answer.json()["detail"]
        # Reads do not depend on the broker at all.
        assert api_get(deployment, "/events").status_code == 200
        # Only the broker's answers are held: the first attempt reached the queue, and the consumer (on
        # its own connection) stores it while the api still waits for the confirm.
        await eventually(
            lambda: counters(deployment)["unique_processed"] == 4, 30, message="the first attempt stored"
        )

    retry = post(deployment, [event("slow-1"), event("slow-2")])
    assert retry.status_code == 200
    # The re-send arrives in full and takes no effect: both copies count, once each, as duplicates.
    # warm once, slow-3 twice (its first attempt reached the queue too), slow-1 and slow-2 twice each.
    assert await settled(deployment, amqp, 7) == {
        "received": 7,
        "unique_processed": 4,
        "duplicate_dropped": 3,
        "invalid": 0,
        "conflicts": 0,
    }
    assert sorted(e["event_id"] for e in all_events(deployment)) == ["slow-1", "slow-2", "slow-3", "warm"]
