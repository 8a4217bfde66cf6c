"""The live tail (GET /events/stream) against real processes: every committed event exactly once, in order,
across a consumer's SIGKILL and a dropped connection; filters; slow clients with a bounded buffer."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.pipeline import counters, drained, start_pipeline, start_load
from tests.harness.processes import Deployment, Process, Processes, all_events, api_get
from tests.harness.sse import Tail, keys
from tests.harness.waiting import eventually


def unique_of(load: Process) -> int:
    assert load.wait(120) == 0, load.output()[-3000:]
    report = [line for line in load.output().splitlines() if line.startswith("{")]
    return int(json.loads(report[-1])["unique"])


async def all_stored(procs: Processes, amqp: AbstractRobustConnection, unique: int) -> list[tuple[str, str]]:
    deployment = procs.deployment
    await eventually(lambda: counters(deployment)["unique_processed"] == unique, 90, message="all stored")
    await eventually(lambda: drained(amqp, deployment.queue), 30, message="queue drained")
    return [(e["topic"], e["event_id"]) for e in all_events(deployment)]


def in_order(*tails: Tail) -> list[int]:
    ids = [e.id for tail in tails for e in tail.messages() if e.id is not None]
    assert ids == sorted(set(ids)), "positions repeat or go backwards"
    return ids


@pytest.mark.backends("sqlite", "postgres")
async def test_a_tail_across_a_consumer_kill_and_a_dropped_connection_delivers_every_event_once_in_order(
    procs: Processes, amqp: AbstractRobustConnection, backend: str
) -> None:
    deployment = procs.deployment
    consumer, _ = await start_pipeline(procs, amqp, consumer_env={"BATCH_SIZE": "50"})
    assert consumer is not None
    # On PostgreSQL two competing consumers: their seqs commit out of order.
    others = [procs.consumer(BATCH_SIZE="50")] if backend == "postgres" else []
    first = Tail(deployment.api_url).open()
    await eventually(first.listening, 10, message="stream open")
    load = start_load(procs, 6000, 71, "--envelope-size", "5", "--max-in-flight", "4")

    await eventually(lambda: len(first.messages()) >= 800, 60, message="events streamed")
    await first.drop()  # mid-stream: the client reconnects from the last id it saw
    assert load.alive  # the consumer dies with events still coming
    consumer.kill9()
    consumer = procs.consumer(BATCH_SIZE="50")
    second = Tail(deployment.api_url, last_event_id=first.last_id()).open()
    expected = await all_stored(procs, amqp, unique_of(load))

    await eventually(
        lambda: len(first.messages()) + len(second.messages()) >= len(expected), 60, message="tail caught up"
    )
    assert keys(first.messages()) + keys(second.messages()) == expected
    assert len(in_order(first, second)) == len(expected)
    assert len(first.messages()) < len(expected)  # the cut really was mid-stream
    # A later stream resuming from the start, filtered to one topic, reads the same rows from the store.
    topic = expected[0][0]
    wanted = [key for key in expected if key[0] == topic]
    filtered = Tail(deployment.api_url, {"topic": topic}, last_event_id=0).open()
    await eventually(lambda: len(filtered.messages()) >= len(wanted), 30, message="filtered caught up")
    assert keys(filtered.messages()) == wanted
    for tail in (second, filtered):
        await tail.drop()
    for process in (consumer, *others):
        assert process.terminate() == 0
