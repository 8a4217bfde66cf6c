"""Retention end to end, real processes on both backends: expired events leave every read at once, their
keys answer 410 and keep absorbing re-sends, the sweeper survives SIGKILL, and the settings are checked."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import counters, settled, start_pipeline, stats
from tests.harness.processes import Deployment, Processes, all_events, api_get
from tests.harness.stores import Peek, PostgresPeek, SqlitePeek, stored_count
from tests.harness.waiting import eventually

pytestmark = pytest.mark.backends("sqlite", "postgres")

KILLED = -9
# Short enough to wait out, long enough that what a test publishes after an expiry is read (on a loaded
# machine) before it expires too.
NO_SWEEPS = {"RETENTION": "12s", "RETENTION_SWEEP_INTERVAL": "3600"}
SWEEPING = {"RETENTION": "20s", "RETENTION_SWEEP_INTERVAL": "0.5"}


def event(event_id: str, topic: str = "ret.test", **payload: Any) -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-05-01T08:00:00Z",
        "source": "retention-test",
        "payload": payload or {"id": event_id},
    }


def post(deployment: Deployment, body: Any, **params: str) -> httpx.Response:
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        return client.post("/publish", json=body, params=params)


def peek_of(deployment: Deployment) -> Peek:
    if deployment.database_url:
        return PostgresPeek(deployment.database_url)
    return SqlitePeek(deployment.db_path)


async def expired(deployment: Deployment, topic: str, event_id: str) -> dict[str, Any]:
    async def gone() -> dict[str, Any] | None:
        response = api_get(deployment, f"/events/{topic}/{event_id}")
        return dict(response.json()) if response.status_code == 410 else None

    found: dict[str, Any] = await eventually(gone, 30, 0.1, message=f"{topic}/{event_id} answers 410")
    return found


async def test_expired_events_leave_every_read_answer_410_and_a_resend_is_a_duplicate(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, consumer_env=NO_SWEEPS)
    old = [event(f"old-{i}", topic="ret.a" if i % 2 else "ret.b") for i in range(40)]
    assert post(deployment, old).status_code == 200
    await settled(deployment, amqp, 40)
    kept = api_get(deployment, "/events/ret.a/old-1").json()

    gone = await expired(deployment, "ret.a", "old-1")
    new = [event(f"new-{i}", topic="ret.a" if i % 2 else "ret.b") for i in range(10)]
    assert post(deployment, new).status_code == 200
    await settled(deployment, amqp, 50)

    # Reads are exact at once: nothing swept (one sweep an hour), no expired event in any read. (The api
    # publishes a request's events as one envelope per topic, so the store's order is by topic here.)
    listed = [(e["topic"], e["event_id"]) for e in all_events(deployment)]
    assert sorted(listed) == sorted((e["topic"], e["event_id"]) for e in new)
    assert sorted(e["event_id"] for e in all_events(deployment, "ret.a")) == sorted(
        e["event_id"] for e in new if e["topic"] == "ret.a"
    )
    desc = api_get(deployment, "/events", order="desc", limit=1000).json()
    assert [(e["topic"], e["event_id"]) for e in desc] == listed[::-1]
    assert gone["received_at"][:23] == kept["received_at"][:23]  # to the millisecond
    assert "expired" in gone["detail"]
    assert api_get(deployment, "/events/ret.a/never-sent").status_code == 404
    for item in old:
        assert api_get(deployment, f"/events/{item['topic']}/{item['event_id']}").status_code == 410

    # A re-send of expired events is a duplicate, with wait=stored and without, never a conflict.
    again = post(
        deployment,
        [event("old-0", topic="ret.b", changed=True), event("old-2", topic="ret.b")],
        wait="stored",
    )
    assert again.status_code == 200, again.text
    assert (again.json()["new"], again.json()["duplicates"]) == (0, 2)
    assert post(deployment, old[:10]).status_code == 200
    assert await settled(deployment, amqp, 62) == {
        "received": 62,
        "unique_processed": 50,
        "duplicate_dropped": 12,
        "invalid": 0,
        "conflicts": 0,
    }
    numbers = stats(deployment)
    assert (numbers["stored_events"], numbers["expired_events"]) == (10, 40)
    assert numbers["retention"] == {"events_seconds": 12.0, "keys_seconds": None}
    assert numbers["oldest_received_at"] == all_events(deployment)[0]["received_at"]
    assert numbers["store_size_bytes"] > 0
    metrics = api_get(deployment, "/metrics").text
    assert "eventagg_stored_events 10.0" in metrics
    assert "eventagg_expired_events 40.0" in metrics
    assert "eventagg_retention_seconds 12.0" in metrics


async def test_a_sweeper_killed_inside_its_transaction_loses_nothing_unexpired_and_the_next_finishes(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    peek = peek_of(deployment)
    first, _ = await start_pipeline(
        procs, amqp, consumer_env={**SWEEPING, "RETENTION_SWEEP_INTERVAL": "3600"}
    )
    assert first is not None
    assert post(deployment, [event(f"old-{i}") for i in range(300)]).status_code == 200
    await settled(deployment, amqp, 300)
    await expired(deployment, "ret.test", "old-299")
    new = [event(f"new-{i}") for i in range(100)]
    assert post(deployment, new).status_code == 200
    await settled(deployment, amqp, 400)
    assert first.terminate() == 0

    killed = procs.consumer(**SWEEPING, EVENTAGG_FAULT_KILL_IN_SWEEP="1")
    assert killed.wait(60) == KILLED, killed.output()
    assert "SIGKILL inside sweep transaction 1" in killed.output()
    # The killed transaction removed nothing: every row is still there, the new ones readable.
    assert await stored_count(peek) == 400
    assert sorted(e["event_id"] for e in all_events(deployment)) == sorted(e["event_id"] for e in new)

    procs.consumer(**SWEEPING)

    async def swept() -> bool:
        return await stored_count(peek) == 100

    await eventually(swept, 60, 0.2, message="the next sweep removed the expired events")
    assert sorted(e["event_id"] for e in all_events(deployment)) == sorted(e["event_id"] for e in new)
    assert counters(deployment)["unique_processed"] == 400
    numbers = stats(deployment)
    assert (numbers["stored_events"], numbers["expired_events"]) == (100, 300)


async def test_after_key_retention_a_resend_is_stored_again(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(
        procs, amqp, consumer_env={"RETENTION": "3s", "KEY_RETENTION": "4s", "RETENTION_SWEEP_INTERVAL": "1"}
    )
    assert post(deployment, [event("a")]).status_code == 200
    await settled(deployment, amqp, 1)
    await eventually(
        lambda: api_get(deployment, "/events/ret.test/a").status_code == 404, 30, 0.1, message="key forgotten"
    )

    again = post(deployment, [event("a", second=True)], wait="stored")

    assert again.status_code == 200, again.text
    assert (again.json()["new"], again.json()["duplicates"]) == (1, 0)
    assert api_get(deployment, "/events/ret.test/a").json()["payload"] == {"second": True}
    assert counters(deployment)["unique_processed"] == 2


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("RETENTION", "forever", "RETENTION: must be a duration such as 90s"),
        ("RETENTION", "-5s", "RETENTION: must be a duration such as 90s"),
        ("KEY_RETENTION", "1x", "KEY_RETENTION: must be a duration such as 90s"),
        ("RETENTION_SWEEP_INTERVAL", "0", "RETENTION_SWEEP_INTERVAL"),
    ],
)
def test_a_bad_retention_setting_is_one_line_naming_the_variable(
    deployment: Deployment, name: str, value: str, says: str
) -> None:
    env = deployment.env(**{name: value, "RETENTION": "1d"} if name != "RETENTION" else {name: value})
    done = subprocess.run(
        [sys.executable, "-m", "consumer"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 2
    problems = [line for line in done.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and says in problems[0], done.stderr
    assert "Traceback" not in done.stderr
