"""End to end on the plain path: with every hooked library at a version nobody verified, the deployables run
on the libraries' public APIs (contract/versions.py, broker/hooks.py, api/http1.py), say so once per library,
and the pipeline still takes effect exactly once."""

from __future__ import annotations

import json
import re

import httpx
from aio_pika.abc import AbstractRobustConnection

from api.http1 import UVICORN
from broker.hooks import LIBRARIES
from contract.versions import ASSUME_ENV
from publisher.load import generate
from tests.harness.pipeline import settled, start_pipeline
from tests.harness.processes import Process, Processes, all_events, api_get

SEED = 20261207
# One past the top of every verified range: what an upgrade that nobody verified would install.
UNVERIFIED = {verified.distribution: verified.below for verified in (*LIBRARIES, UVICORN)}
PLAIN = {ASSUME_ENV: ",".join(f"{name}={version}" for name, version in UNVERIFIED.items())}
WARNING = "is not a version the fast paths were verified on"


def warned(process: Process) -> list[str]:
    """The libraries the process said it runs without hooks for, one entry per WARNING line."""
    said = re.compile(rf"WARNING .*?(\S+) (\S+) {WARNING}")
    return sorted(match.group(1) for match in map(said.search, process.output().splitlines()) if match)


async def test_unverified_library_versions_run_the_pipeline_on_public_apis_once_and_say_so_once_each(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    consumer, api = await start_pipeline(procs, amqp, consumer_env=PLAIN, api_env=PLAIN)
    assert consumer is not None

    # The CLI's confirming publisher on aiormq's basic_publish, single-event messages and envelopes.
    single = procs.publish(
        "--count", "2000", "--duplicates", "0.2", "--topics", "8", "--seed", str(SEED),
        "--envelope-size", "1", **PLAIN,
    )  # fmt: skip
    assert (single["exit_code"], single["sent"], single["unique"], single["confirmed"]) == (
        0,
        2000,
        1600,
        2000,
    )
    enveloped = procs.publish(
        "--count", "2000", "--duplicates", "0.2", "--topics", "8", "--seed", str(SEED),
        "--envelope-size", "100", **PLAIN,
    )  # fmt: skip
    assert (enveloped["exit_code"], enveloped["confirmed"]) == (0, 2000)
    # The api's publisher on the same plain path, with uvicorn's own protocol: one new event, one stored one.
    known = generate(2000, 0.2, 8, SEED).events[0]
    body = [
        {
            "topic": "plain.http",
            "event_id": "h1",
            "timestamp": "2026-12-07T00:00:00Z",
            "source": "t",
            "payload": {"n": 1},
        },
        json.loads(known.model_dump_json()),
    ]
    with httpx.Client(base_url=deployment.api_url, timeout=30) as client:
        answer = client.post("/publish", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 2
        assert (
            client.post("/publish", content=b"{", headers={"content-type": "application/json"}).status_code
            == 422
        )

    assert await settled(deployment, amqp, 4002) == {
        "received": 4002,
        "unique_processed": 1601,
        "duplicate_dropped": 2401,
        "invalid": 0,
        "conflicts": 0,
    }
    expected = {event.key() for event in generate(2000, 0.2, 8, SEED).events} | {("plain.http", "h1")}
    stored = all_events(deployment)
    assert len(stored) == 1601
    assert {(event["topic"], event["event_id"]) for event in stored} == expected
    assert api_get(deployment, "/health").json()["broker"]["status"] == "connected"

    # One WARNING per hooked library each process uses, naming the version in use; the api also names uvicorn.
    broker_libraries = sorted(verified.distribution for verified in LIBRARIES)
    publishers = [process for process in procs.all if process.module == "publisher"]
    for process in [consumer, *publishers]:
        assert warned(process) == broker_libraries, process.output()
    assert warned(api) == sorted([*broker_libraries, "uvicorn"]), api.output()
    for name, version in UNVERIFIED.items():
        assert f"{name} {version} {WARNING}" in api.output()
