"""End to end: CLI → RabbitMQ → consumer → SQLite → api, with real processes and exact outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from publisher.load import generate
from tests.harness.pipeline import counters, settled, start_pipeline, stats
from tests.harness.probes import queue_depth
from tests.harness.processes import Processes, all_events, api_get, free_port
from tests.harness.waiting import eventually

SEED = 20261122

# Every test here runs on both store backends, but those that never reach a store.
pytestmark = pytest.mark.backends("sqlite", "postgres")


@pytest.mark.parametrize("envelope_size", [1, 100])
async def test_load_with_duplicates_takes_effect_exactly_once(
    procs: Processes, amqp: AbstractRobustConnection, envelope_size: int
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    args = (
        "--count",
        "5000",
        "--duplicates",
        "0.2",
        "--topics",
        "8",
        "--seed",
        str(SEED),
        "--envelope-size",
        str(envelope_size),
    )

    summary = procs.publish(*args)

    assert summary["exit_code"] == 0
    assert (summary["sent"], summary["unique"], summary["duplicates"], summary["confirmed"]) == (
        5000,
        4000,
        1000,
        5000,
    )
    assert await settled(deployment, amqp, 5000) == {
        "received": 5000,
        "unique_processed": 4000,
        "duplicate_dropped": 1000,
        "invalid": 0,
        "conflicts": 0,
    }
    expected = {e.key(): e for e in generate(5000, 0.2, 8, SEED).events}
    stored = all_events(deployment)
    assert len(stored) == 4000
    assert {(e["topic"], e["event_id"]) for e in stored} == set(expected)
    for event in stored:
        original = expected[(event["topic"], event["event_id"])]
        assert (event["payload"], event["source"], event["timestamp"]) == (
            original.payload,
            original.source,
            original.timestamp,
        )
    assert stats(deployment)["topic_counts"] == {
        topic: sum(1 for key in expected if key[0] == topic) for topic in {key[0] for key in expected}
    }

    # The same load again: every event is now a duplicate.
    again = procs.publish(*args)

    assert again["exit_code"] == 0
    assert await settled(deployment, amqp, 10_000) == {
        "received": 10_000,
        "unique_processed": 4000,
        "duplicate_dropped": 6000,
        "invalid": 0,
        "conflicts": 0,
    }
    assert len(all_events(deployment)) == 4000


def foreign_event(event_id: str, topic: str = "foreign.client") -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-03-01T12:00:00+02:00",
        "source": "other-client",
        "payload": {"n": event_id},
    }


async def publish_bare(amqp: AbstractRobustConnection, exchange_name: str, bodies: list[bytes]) -> None:
    """Publish as a quick script or the management UI would: no content type, no persistence, no id."""
    channel = await amqp.channel()
    try:
        exchange = await channel.get_exchange(exchange_name)
        for body in bodies:
            await exchange.publish(aio_pika.Message(body), "foreign.client")
    finally:
        await channel.close()


async def test_messages_from_another_client_without_properties_are_consumed_the_same_way(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    envelope = [foreign_event("env-1"), foreign_event("env-2"), foreign_event("single-1")]
    await publish_bare(
        amqp,
        deployment.exchange,
        [json.dumps(foreign_event("single-1")).encode(), json.dumps(envelope).encode(), b"[]"],
    )

    assert await settled(deployment, amqp, 4) == {
        "received": 4,
        "unique_processed": 3,
        "duplicate_dropped": 1,
        "invalid": 0,
        "conflicts": 0,
    }
    stored = {e["event_id"]: e for e in all_events(deployment)}
    assert set(stored) == {"single-1", "env-1", "env-2"}
    assert stored["single-1"]["timestamp"] == "2026-03-01T10:00:00Z"
    assert stored["env-2"]["payload"] == {"n": "env-2"}


def pika_publish(url: str, exchange: str, bodies: list[bytes]) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(exchange, "pika.topic", body)
    finally:
        connection.close()


async def test_messages_from_pika_are_consumed_as_single_events_and_envelopes(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    import asyncio

    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    single = json.dumps(foreign_event("p-1", "pika.topic")).encode()
    envelope = json.dumps([foreign_event("p-2", "pika.topic"), foreign_event("p-3", "pika.topic")]).encode()

    await asyncio.to_thread(pika_publish, deployment.amqp_url, deployment.exchange, [single, envelope])

    assert await settled(deployment, amqp, 3) == {
        "received": 3,
        "unique_processed": 3,
        "duplicate_dropped": 0,
        "invalid": 0,
        "conflicts": 0,
    }
    assert {e["event_id"] for e in all_events(deployment, "pika.topic")} == {"p-1", "p-2", "p-3"}


async def test_same_key_with_other_payload_keeps_the_first_and_counts_a_conflict(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    first = foreign_event("same") | {"payload": {"version": 1}}
    second = foreign_event("same") | {"payload": {"version": 2}}
    await publish_bare(
        amqp, deployment.exchange, [json.dumps(body).encode() for body in (first, second, first)]
    )

    assert await settled(deployment, amqp, 3) == {
        "received": 3,
        "unique_processed": 1,
        "duplicate_dropped": 2,
        "invalid": 0,
        "conflicts": 1,
    }
    stored = all_events(deployment)
    assert [e["payload"] for e in stored] == [{"version": 1}]


INVALID_BODIES = {
    "not json": b"{this is not json",
    "missing field": json.dumps(
        {"topic": "t", "event_id": "x", "timestamp": "2026-01-01T00:00:00Z"}
    ).encode(),
    "bad timestamp": json.dumps(foreign_event("bad-ts") | {"timestamp": "yesterday"}).encode(),
    "payload not an object": json.dumps(foreign_event("bad-payload") | {"payload": [1, 2]}).encode(),
    "oversized payload": json.dumps(foreign_event("big") | {"payload": {"blob": "x" * 300_000}}).encode(),
    "one bad event spoils its envelope": json.dumps([foreign_event("fine-in-bad"), {"topic": "t"}]).encode(),
    "wildcard topic": json.dumps(foreign_event("wild", "a.*")).encode(),
    "not utf-8": b"\xff\xfe{}",
}


async def test_invalid_messages_are_dead_lettered_counted_and_do_not_block_valid_ones(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    interleaved = []
    for index, body in enumerate(INVALID_BODIES.values()):
        interleaved += [body, json.dumps(foreign_event(f"ok-{index}")).encode()]
    await publish_bare(amqp, deployment.exchange, interleaved)
    n = len(INVALID_BODIES)

    assert await settled(deployment, amqp, 2 * n) == {
        "received": 2 * n,
        "unique_processed": n,
        "duplicate_dropped": 0,
        "invalid": n,
        "conflicts": 0,
    }
    assert {e["event_id"] for e in all_events(deployment)} == {f"ok-{i}" for i in range(n)}

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, deployment.dead_letter_queue) == n

    await eventually(dead_lettered, 30, message="dead letters")
    dead_channel = await amqp.channel()
    dead_queue = await dead_channel.get_queue(deployment.dead_letter_queue)
    bodies = set()
    for _ in range(n):
        message = await dead_queue.get(timeout=5)
        assert message is not None
        bodies.add(message.body)
        await message.ack()
    await dead_channel.close()
    assert bodies == set(INVALID_BODIES.values())


async def test_api_reports_the_same_stats_after_its_own_restart(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    _, api = await start_pipeline(procs, amqp)
    procs.publish("--count", "1000", "--duplicates", "0.1", "--seed", "7")
    before = await settled(deployment, amqp, 1000)

    assert api.terminate() == 0
    procs.api()
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api back")

    assert (
        counters(deployment)
        == before
        == {
            "received": 1000,
            "unique_processed": 900,
            "duplicate_dropped": 100,
            "invalid": 0,
            "conflicts": 0,
        }
    )
    assert len(all_events(deployment)) == 900


async def test_ndjson_from_a_file_and_stdin_publishes_good_lines_and_reports_bad_ones_by_number(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    lines = [
        json.dumps(foreign_event("nd-1")),
        "{not json",
        json.dumps(foreign_event("nd-2")),
        "",
        json.dumps({"topic": "t", "event_id": "no-source", "timestamp": "2026-01-01T00:00:00Z"}),
        json.dumps(foreign_event("nd-1")),
        "[1, 2]",
    ]
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")

    summary = procs.publish("--file", str(path))

    assert summary["exit_code"] == 3
    assert (summary["sent"], summary["unique"], summary["duplicates"], summary["bad_lines"]) == (3, 2, 1, 3)
    output = procs.all[-1].output()
    assert f"{path}: line 2: not valid JSON" in output
    assert f"{path}: line 5: source: Field required" in output
    assert f"{path}: line 7: expected one JSON object per line" in output

    stdin = procs.start(
        "publisher",
        "--file",
        "-",
        "--json",
        "--quiet",
        stdin=b"\n".join(
            [json.dumps(foreign_event("nd-3")).encode(), b"oops", json.dumps(foreign_event("nd-4")).encode()]
        ),
    )
    assert stdin.wait(60) == 3
    assert "-: line 2: not valid JSON" in stdin.output()

    assert await settled(deployment, amqp, 5) == {
        "received": 5,
        "unique_processed": 4,
        "duplicate_dropped": 1,
        "invalid": 0,
        "conflicts": 0,
    }
    assert {e["event_id"] for e in all_events(deployment)} == {"nd-1", "nd-2", "nd-3", "nd-4"}


# Never reaches a store: the CLI fails before it publishes.
@pytest.mark.backends("sqlite")
def test_an_unreachable_broker_is_a_clear_error_that_never_shows_the_password(procs: Processes) -> None:
    nothing_there = f"amqp://guest:hunter2@127.0.0.1:{free_port()}/"

    process = procs.start("publisher", "--count", "10", AMQP_URL=nothing_there)

    assert process.wait(60) == 1
    output = process.output()
    assert "publisher: cannot reach amqp://guest:***@127.0.0.1:" in output
    assert "nothing was published" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


# Never reaches a store: the CLI fails before it publishes.
@pytest.mark.backends("sqlite")
def test_check_needs_the_confirmed_log_and_a_reproducible_workload(procs: Processes) -> None:
    for args in (["--check", "--seed", "1"], ["--check", "--confirmed-log", "c.jsonl"]):
        process = procs.start("publisher", *args)
        assert process.wait(60) == 2
        assert "--check needs --confirmed-log and the workload the publisher sent" in process.output()


async def test_check_reports_what_was_not_stored_and_exits_4(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    log = deployment.logs / "confirmed.jsonl"
    workload = ["--count", "100", "--duplicates", "0", "--seed", "3"]
    assert procs.publish(*workload, "--confirmed-log", str(log))["exit_code"] == 0
    await settled(deployment, amqp, 100)
    # Claim one more confirmed event of a bigger workload than was sent: the check must call it lost.
    bigger = generate(101, 0, 8, 3).events
    with log.open("a") as out:
        out.write(json.dumps([bigger[-1].topic, bigger[-1].event_id]) + "\n")

    checker = procs.start(
        "publisher",
        "--count",
        "101",
        "--duplicates",
        "0",
        "--seed",
        "3",
        "--check",
        "--confirmed-log",
        str(log),
    )
    assert checker.wait(60) == 4
    output = checker.output()
    assert f"lost: {bigger[-1].topic} {bigger[-1].event_id}" in output
    assert "confirmed   101\nstored      100\nlost        1\nunexpected  0" in output
    assert "check       FAILED" in output
