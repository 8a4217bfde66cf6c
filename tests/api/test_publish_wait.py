"""PUBLISH_WAIT: what a plain publish waits for (the broker's confirm, or the store), by profile, with the
request's ?wait= winning; and seed004's count of events already stored when a request arrives."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import ValidationError

from api.settings import ApiSettings
from tests.harness.pipeline import counters, settled, start_pipeline
from tests.harness.processes import Processes

PLAIN = {"status", "received", "accepted", "rejected", "enqueued", "count"}
STORED = PLAIN | {"stored", "new", "duplicates", "pending"}


def event(event_id: str, topic: str = "wait.plain") -> dict[str, Any]:
    return {"topic": topic, "event_id": event_id, "timestamp": "2026-05-01T08:00:00Z", "source": "client"}


@pytest.mark.parametrize(
    ("profile", "publish_wait", "asked", "waits"),
    [
        ("default", None, None, "confirmed"),
        ("seed003", None, None, "stored"),
        ("seed004", None, None, "stored"),
        ("default", "stored", None, "stored"),
        ("seed003", "confirmed", None, "confirmed"),
        ("seed004", None, "confirmed", "confirmed"),
        ("default", "confirmed", "stored", "stored"),
    ],
)
def test_the_request_wins_then_publish_wait_then_the_profile(
    profile: str, publish_wait: str | None, asked: str | None, waits: str
) -> None:
    settings = ApiSettings(api_compat=profile, publish_wait=publish_wait)  # type: ignore[arg-type]
    assert settings.waits_for(asked) == waits  # type: ignore[arg-type]


def test_a_bad_publish_wait_is_refused() -> None:
    with pytest.raises(ValidationError, match="publish_wait"):
        ApiSettings(publish_wait="soon")  # type: ignore[arg-type]


async def test_seed003s_dedup_check_reads_exact_stats_the_moment_its_second_post_returns(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    """Seed 003's `001_dedup_validation`, unchanged: POST an event twice, then read /stats at once."""
    deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"API_COMPAT": "seed003"})
    with httpx.Client(base_url=deployment.api_url, timeout=60) as client:
        for n in range(1, 6):
            for _ in range(2):
                assert client.post("/publish", json=event(f"dedup-{n}")).status_code == 200
            stats = client.get("/stats").json()
            assert (stats["unique_processed"], stats["duplicate_dropped"]) == (n, n), stats
        # ?wait=confirmed is the opposite: the broker's confirm only, the plain answer.
        quick = client.post("/publish", params={"wait": "confirmed"}, json=[event("quick")])
        assert (quick.status_code, set(quick.json())) == (200, PLAIN)
    assert await settled(deployment, amqp, 11) == {
        "received": 11,
        "unique_processed": 6,
        "duplicate_dropped": 5,
        "invalid": 0,
        "conflicts": 0,
    }


async def test_publish_wait_stored_makes_every_publish_wait_and_a_request_can_still_ask_for_less(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"PUBLISH_WAIT": "stored"})
    with httpx.Client(base_url=deployment.api_url, timeout=60) as client:
        for path in ("/publish", "/events"):
            first = client.post(path, json=[event(f"{path}-1"), event(f"{path}-2")])
            assert (first.status_code, first.json()) == (
                200,
                {
                    "status": "accepted",
                    "received": 2,
                    "accepted": 2,
                    "rejected": 0,
                    "enqueued": 2,
                    "count": 2,
                    "stored": 2,
                    "new": 2,
                    "duplicates": 0,
                    "pending": 0,
                },
            )
        assert counters(deployment)["unique_processed"] == 4  # no waiting on the test's side
        quick = client.post("/publish", params={"wait": "confirmed"}, json=[event("quick")])
        assert (quick.status_code, set(quick.json())) == (200, PLAIN)


async def test_seed004_counts_an_already_stored_event_rejected_with_or_without_wait(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, api_env={"API_COMPAT": "seed004"})

    def details(answer: httpx.Response) -> dict[str, int]:
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert body["status"] == "success"
        return dict(body["details"])

    with httpx.Client(base_url=deployment.api_url, timeout=60) as client:
        # Two copies of a new key in one request: neither was stored when it arrived, both accepted.
        twice = client.post("/publish", json=[event("k1"), event("k1"), event("k2")])
        assert details(twice) == {"accepted": 3, "rejected": 0, "duplicates_immediate": 0}
        # Stored by now (the profile waits for the store): a re-send is rejected, waiting or not.
        for n, wait in enumerate(({}, {"wait": "stored"}, {"wait": "confirmed"})):
            again = client.post("/events", params=wait, json=[event("k1"), event(f"new-{n}")])
            assert details(again) == {"accepted": 1, "rejected": 1, "duplicates_immediate": 1}, wait
        both = client.post("/publish", params={"wait": "confirmed"}, json=[event("k2"), event("k2")])
        assert details(both) == {"accepted": 0, "rejected": 2, "duplicates_immediate": 2}
    assert await settled(deployment, amqp, 11) == {
        "received": 11,
        "unique_processed": 5,
        "duplicate_dropped": 6,
        "invalid": 0,
        "conflicts": 0,
    }
