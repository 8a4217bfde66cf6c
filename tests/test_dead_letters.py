"""What the consumer rejected, as it logged it, at GET /dead-letters and /stats; and a poison message whose
reject was lost after its batch committed is kept, counted and dead-lettered once all the same."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.cleanups import Cleanups
from tests.harness.pipeline import counters, drained, settled, start_pipeline, stats
from tests.harness.probes import queue_depth
from tests.harness.processes import Deployment, Processes, all_events, free_port
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "topic": "dl.orders",
        "event_id": event_id,
        "timestamp": "2026-05-01T08:00:00Z",
        "source": "t",
        **extra,
    }


OVERSIZED = json.dumps(event("big", payload={"blob": "x" * 300_000})).encode()
# In publish order, with the routing key each is sent with.
BODIES: list[tuple[str, bytes]] = [
    ("dl.one", b"{this is not json"),
    ("dl.two", json.dumps({"topic": "t", "event_id": "x", "timestamp": "2026-01-01T00:00:00Z"}).encode()),
    ("dl.three", OVERSIZED),
    ("dl.four", b"\xff\xfe{}"),
]


def pages(deployment: Deployment, limit: int) -> list[list[dict[str, Any]]]:
    out = []
    with httpx.Client(timeout=10) as client:
        url: str | None = f"{deployment.api_url}/dead-letters?limit={limit}"
        while url is not None:
            answer = client.get(url)
            assert answer.status_code == 200, answer.text
            out.append(answer.json())
            url = answer.links.get("next", {}).get("url")
    return out


async def test_rejected_messages_are_readable_newest_first_as_the_consumer_logged_them(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    consumer, _ = await start_pipeline(procs, amqp)
    channel = await amqp.channel()
    exchange = await channel.get_exchange(deployment.exchange)
    for routing_key, body in BODIES:
        await exchange.publish(aio_pika.Message(body), routing_key)
    await exchange.publish(aio_pika.Message(json.dumps(event("fine")).encode()), "dl.orders")
    await channel.close()
    assert (await settled(deployment, amqp, 5))["invalid"] == 4

    found = pages(deployment, 3)

    assert [len(page) for page in found] == [3, 1]
    letters = [letter for page in found for letter in page]
    assert [letter["routing_key"] for letter in letters] == ["dl.four", "dl.three", "dl.two", "dl.one"]
    assert [letter["kind"] for letter in letters] == ["not_json", "too_large", "schema", "not_json"]
    assert letters[0]["id"] > letters[1]["id"] > letters[2]["id"] > letters[3]["id"]
    four, three, two, one = letters
    assert (one["body"], one["body_encoding"], one["size"], one["truncated"]) == (
        "{this is not json",
        "utf-8",
        17,
        False,
    )
    assert (four["body"], four["body_encoding"]) == (base64.b64encode(b"\xff\xfe{}").decode(), "base64")
    assert (three["body"], three["size"], three["truncated"]) == (
        OVERSIZED[: 64 * 1024].decode(),
        len(OVERSIZED),
        True,
    )
    assert two["body"] == BODIES[1][1].decode() and not two["truncated"]
    assert consumer is not None
    log = consumer.output()
    for letter in letters:
        assert f"reason={letter['reason']}" in log
        assert letter["at"].endswith("Z")
    assert stats(deployment)["dead_letters"] == {
        "by_reason": {"not_json": 2, "schema": 1, "too_large": 1},
        "kept": 4,
        "dropped": 0,
    }
    with httpx.Client(base_url=deployment.api_url, timeout=10) as client:
        assert client.get("/dead-letters", params={"after": "nope"}).status_code == 422
        assert client.get("/dead-letters", params={"limit": 1001}).status_code == 422


async def test_the_publisher_lists_dead_letters_and_replays_corrected_events(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    # None yet: one line says so, and the exit code is 0.
    empty = procs.start("publisher", "dead-letters")
    assert empty.wait(60) == 0
    assert empty.output().splitlines() == [f"publisher: no dead letters at {deployment.api_url}"]
    channel = await amqp.channel()
    exchange = await channel.get_exchange(deployment.exchange)
    broken = [event("fix-1", timestamp="yesterday"), event("fix-2", source="")]
    for index, body in enumerate(broken):
        await exchange.publish(aio_pika.Message(json.dumps(body).encode()), f"dl.fix.{index}")
    await channel.close()
    assert (await settled(deployment, amqp, 2))["invalid"] == 2

    listing = procs.start("publisher", "dead-letters")
    assert listing.wait(60) == 0
    rows = listing.output().splitlines()
    assert [row.split("  ")[3] for row in rows] == ["dl.fix.1", "dl.fix.0"]
    assert all("  schema  " in row for row in rows)
    dumped = procs.start("publisher", "dead-letters", "--bodies")
    assert dumped.wait(60) == 0
    assert [json.loads(line) for line in dumped.output().splitlines()] == broken[::-1]

    fixed = tmp_path / "fixed.ndjson"
    fixed.write_text("\n".join(json.dumps(e) for e in [event("fix-1"), event("fix-2")]) + "\n")
    replayed = procs.start("publisher", "dead-letters", "replay", "--file", str(fixed), "--json", "--quiet")
    assert replayed.wait(60) == 0
    summary = json.loads(replayed.output().splitlines()[-1])
    assert (summary["sent"], summary["confirmed"], summary["exit_code"]) == (2, 2, 0)
    assert await settled(deployment, amqp, 4) == {
        "received": 4,
        "unique_processed": 2,
        "duplicate_dropped": 0,
        "invalid": 2,
        "conflicts": 0,
    }


@pytest.mark.backends("sqlite")
def test_listing_dead_letters_with_the_api_down_exits_4_as_the_readme_says(procs: Processes) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    listing = procs.start("publisher", "dead-letters", API_URL=dead)

    assert listing.wait(60) == 4
    lines = listing.output().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"publisher: cannot read dead letters from {dead}: "), lines


async def test_a_cached_dead_letter_depth_says_how_old_it_is(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    # A reading kept for two minutes: /stats then answers with it while the dead letters arrive.
    await start_pipeline(procs, amqp, api_env={"BROKER_PROBE_TTL": "120"})
    first = stats(deployment)["dead_letter_queue"]
    read_at = time.monotonic()
    assert (first["messages"], first["age_seconds"] is not None) == (0, True)
    channel = await amqp.channel()
    exchange = await channel.get_exchange(deployment.exchange)
    for routing_key, body in BODIES[:2]:
        await exchange.publish(aio_pika.Message(body), routing_key)
    await channel.close()
    await settled(deployment, amqp, 2)
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 2

    now = stats(deployment)
    assert now["dead_letters"]["kept"] == 2
    # The depth is still the first reading, and it says so: it is at least as old as the time since then.
    assert now["dead_letter_queue"]["messages"] == 0
    assert now["dead_letter_queue"]["age_seconds"] >= time.monotonic() - read_at + first["age_seconds"] - 0.01


# An AMQP method frame's class and method ids: Basic.Reject (60, 90).
BASIC_REJECT = b"\x00\x3c\x00\x5a"
POISON = b"{this is not json"


@pytest.mark.backends("sqlite", "postgres")
async def test_a_poison_message_whose_reject_is_lost_after_the_commit_is_kept_counted_and_dead_lettered_once(
    procs: Processes, amqp: AbstractRobustConnection, cleanups: Cleanups
) -> None:
    """Found by the soak: a batch holding a poison message committed (dead letter kept, `invalid` counted),
    then its channel closed before the reject reached the broker, which delivered the message again."""
    deployment = procs.deployment
    await start_pipeline(procs, amqp, with_consumer=False)
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(deployment.exchange)
    valid = [event(f"lost-reject-{n}") for n in range(9)]
    for body in (
        [json.dumps(e).encode() for e in valid[:4]] + [POISON] + [json.dumps(e).encode() for e in valid[4:]]
    ):
        await exchange.publish(aio_pika.Message(body, delivery_mode=2), "dl.orders")
    await channel.close()
    assert await queue_depth(amqp, deployment.queue) == 10

    broker = urlsplit(deployment.amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672).start()
    cleanups.add(proxy.close)
    # The consumer's first reject resets its connections before it reaches the broker: after the commit,
    # the batch is settled on a dead connection, and the broker delivers all ten again, flagged redelivered.
    proxy.cut_when_sent(BASIC_REJECT)
    via_proxy = urlunsplit(
        broker._replace(netloc=f"{broker.username}:{broker.password}@127.0.0.1:{proxy.port}")
    )
    # All ten in one batch: it waits for company (up to 2 s) until it holds ten.
    consumer = procs.consumer(
        AMQP_URL=via_proxy, RECONNECT_INTERVAL="0.2", BATCH_SIZE="10", PREFETCH="10", BATCH_WAIT="2"
    )

    await settled(deployment, amqp, 19)

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, deployment.dead_letter_queue) >= 1

    await eventually(dead_lettered, 30, message="the poison message dead-lettered")
    assert consumer.terminate() == 0
    # The whole batch came back: the reject (and the ack after it) never reached the broker.
    assert re.findall(r"consumer stopped .* redelivered=(\d+) ", consumer.output()) == ["10"]
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 1
    assert await queue_depth(amqp, deployment.queue) == 0
    # The first delivery: 9 + 1; the redelivery: 9 duplicates, and the poison message in no counter.
    assert counters(deployment) == {
        "received": 19,
        "unique_processed": 9,
        "duplicate_dropped": 9,
        "invalid": 1,
        "conflicts": 0,
    }
    letters = [letter for page in pages(deployment, 100) for letter in page]
    assert [(letter["routing_key"], letter["body"], letter["size"]) for letter in letters] == [
        ("dl.orders", POISON.decode(), len(POISON))
    ]
    assert stats(deployment)["dead_letters"] == {"by_reason": {"not_json": 1}, "kept": 1, "dropped": 0}
    stored = sorted(e["event_id"] for e in all_events(deployment))
    assert stored == sorted(e["event_id"] for e in valid)
    assert "redelivered invalid messages=1 already kept as dead letters" in consumer.output()


@pytest.mark.backends("postgres")
@pytest.mark.parametrize("message_id", ["held-1", None], ids=["with-message-id", "without"])
async def test_a_poison_message_a_stopped_consumer_still_held_is_kept_and_counted_once(
    procs: Processes, amqp: AbstractRobustConnection, message_id: str | None
) -> None:
    """Found by the soak (3 consumers on PostgreSQL): a consumer held past the broker's heartbeat timeout with
    a poison message in its socket's buffer loses its connection; the broker gives the message to another
    consumer, which keeps it. The first, let go, reads its buffered delivery (no redelivered flag: its first
    delivery) and commits it before it learns that its channel is gone. With a message id it is known by
    it; without one, it claims the dead letter the redelivery left."""
    deployment = procs.deployment
    await start_pipeline(procs, amqp, with_consumer=False)
    short = f"{deployment.amqp_url}{'&' if '?' in deployment.amqp_url else '?'}heartbeat=1"
    held = procs.consumer(AMQP_URL=short, RECONNECT_INTERVAL="0.2")
    await eventually(lambda: "consuming queue=" in held.output(), 60, message="the first consumer consuming")
    held.popen.send_signal(signal.SIGSTOP)
    try:
        if message_id is None:  # aio-pika (aiormq) gives every message an id; pika, as most clients, none
            await asyncio.to_thread(_pika_publish, deployment.amqp_url, deployment.exchange, POISON)
        else:
            channel = await amqp.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(deployment.exchange)
            await exchange.publish(
                aio_pika.Message(POISON, delivery_mode=2, message_id=message_id), "dl.orders"
            )
            await channel.close()
        # Delivered to the stopped consumer (the only one): not ready in the queue.
        await eventually(lambda: drained(amqp, deployment.queue), 30, message="delivered to the held one")
        other = procs.consumer(RECONNECT_INTERVAL="0.2")
        # The broker drops the stopped consumer's connection and delivers the message to the other.
        await eventually(lambda: counters(deployment)["invalid"] == 1, 60, message="the other kept it")
        await eventually(
            lambda: _depth_at_least(amqp, deployment.dead_letter_queue, 1), 30, message="dead-lettered"
        )
    finally:
        held.popen.send_signal(signal.SIGCONT)
    await eventually(
        lambda: held.output().count("consuming queue=") + held.output().count("consuming again") >= 2,
        60,
        message="the held consumer back",
    )
    assert held.terminate() == 0
    assert other.terminate() == 0
    assert await queue_depth(amqp, deployment.queue) == 0
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 1
    assert counters(deployment)["invalid"] == 1
    letters = [letter for page in pages(deployment, 100) for letter in page]
    assert [(letter["body"], letter["size"]) for letter in letters] == [(POISON.decode(), len(POISON))]
    assert "already kept as dead letters" in held.output()  # the held consumer did read its late delivery


def _pika_publish(url: str, exchange: str, body: bytes) -> None:
    """One persistent message without a message id, confirmed."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange, "dl.orders", body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


async def _depth_at_least(amqp: AbstractRobustConnection, queue: str, depth: int) -> bool:
    return await queue_depth(amqp, queue) >= depth
