"""GET /events?q= and payload.<field>= through the real consumer and api, on both backends: exactly the
events the reference filter selects from those sent, with the other filters, both orders and Link paging."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contract.event import Event
from tests.harness.pipeline import settled, start_pipeline
from tests.harness.processes import Deployment, Processes, event_ids
from tests.harness.search import SEARCHES, expected, sent


def ids(deployment: Deployment, params: dict[str, Any]) -> list[str]:
    return event_ids(deployment, 3, params)


def exported(deployment: Deployment, params: dict[str, Any]) -> list[str]:
    with httpx.Client(timeout=30) as client:
        answer = client.get(f"{deployment.api_url}/events/export", params=params)
    assert answer.status_code == 200, answer.text
    return [json.loads(line)["event_id"] for line in answer.text.splitlines()]


def streamed(deployment: Deployment, params: dict[str, Any], count: int) -> list[str]:
    """The first `count` events of a live tail from the start (its catch-up, in the store's order): any event
    it should not list, before the last it should, breaks the comparison."""
    out: list[str] = []
    with (
        httpx.Client(timeout=httpx.Timeout(30, read=20)) as client,
        client.stream("GET", f"{deployment.api_url}/events/stream", params={**params, "after": 0}) as answer,
    ):
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[len("data: ") :])["event_id"])
                if len(out) == count:
                    break
    return out


def wire(e: Event) -> dict[str, Any]:
    return {"topic": e.topic, "event_id": e.event_id, "timestamp": e.timestamp, "source": e.source,
            "payload": e.payload}  # fmt: skip


@pytest.mark.backends("sqlite", "postgres")
async def test_search_through_the_api_returns_exactly_the_matching_events_with_filters_and_paging(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, consumer_env={"SEARCH": "on"})
    events = sent(0) + sent(1)
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        assert client.post("/publish", json=[wire(e) for e in events]).status_code == 200
        await settled(deployment, amqp, len(events))
        stored_ids = [e["event_id"] for e in client.get("/events", params={"limit": 1000}).json()]
    by_id = {e.event_id: e for e in events}
    assert sorted(stored_ids) == sorted(by_id)
    stored = [by_id[i] for i in stored_ids]  # in the order the store holds them

    for q, pairs in SEARCHES:
        params: dict[str, Any] = {f"payload.{name}": value for name, value in pairs}
        if q is not None:
            params["q"] = q
        assert ids(deployment, params) == expected(stored, q, pairs, None, None), params
        assert ids(deployment, {**params, "q": f"{q or ''} -- !!"}) == expected(stored, q, pairs, None, None)
        narrowed = {**params, "topic": "orders", "source": "api", "order": "desc"}
        assert ids(deployment, narrowed) == expected(stored, q, pairs, "orders", "api")[::-1], narrowed
        # The export and the live tail take the same filters (api/selection.py).
        assert exported(deployment, params) == expected(stored, q, pairs, None, None), params
    q, pairs = SEARCHES[0]
    params = {f"payload.{name}": value for name, value in pairs} | ({"q": q} if q is not None else {})
    wanted = expected(stored, q, pairs, None, None)
    assert streamed(deployment, params, len(wanted)) == wanted, params


async def test_what_cannot_be_searched_for_is_a_422_naming_the_parameter(procs: Processes) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, None, with_consumer=False)
    many = {f"payload.f{n}": "x" for n in range(9)}
    with httpx.Client(base_url=deployment.api_url, timeout=10) as client:
        for params, loc in [
            ({"q": "x" * 1001}, ["query", "q"]),
            ({"payload.": "x"}, ["query", "payload.<field>"]),
            (many, ["query", "payload.<field>"]),
            ({"payload.status": "x" * 1001}, ["query", "payload.status"]),
        ]:
            answer = client.get("/events", params=params)
            assert answer.status_code == 422, (params, answer.text)
            assert [e["loc"] for e in answer.json()["detail"]] == [loc], answer.text


async def test_a_search_of_a_store_without_search_is_a_409_saying_how_to_turn_it_on(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)  # SEARCH unset: off
    with httpx.Client(base_url=deployment.api_url, timeout=10) as client:
        assert client.get("/events").status_code == 200
        for path in ("/events", "/events/export", "/events/stream"):
            for params in ({"q": "disk"}, {"payload.status": "failed"}):
                answer = client.get(path, params=params)
                assert answer.status_code == 409, (path, answer.text)
                assert "SEARCH=on" in answer.json()["detail"]
        assert client.get("/events", params={"q": "!!"}).status_code == 200  # no words: no search
