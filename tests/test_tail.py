"""The live tail (GET /events/stream) against real processes: every committed event exactly once, in order,
across a consumer's SIGKILL and a dropped connection; filters; slow clients with a bounded buffer."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from publisher import load
from tests.harness.pipeline import counters, drained, start_load, start_pipeline
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
    load = start_load(procs, 6000, 71, "--envelope-size", "2", "--max-in-flight", "2")

    await eventually(lambda: len(first.messages()) >= 800, 60, message="events streamed")
    await first.drop()  # mid-stream: the client reconnects from the last id it saw
    assert load.alive  # the consumer dies with events still coming
    consumer.kill9()
    consumer = procs.consumer(BATCH_SIZE="50")
    second = Tail(deployment.api_url, last_event_id=first.last_id()).open()
    expected = await all_stored(procs, amqp, unique_of(load))

    try:
        await eventually(
            lambda: len(first.messages()) + len(second.messages()) >= len(expected),
            60,
            message="tail caught up",
        )
    except AssertionError:
        # Which positions never came: a fresh stream from the start reads them all from the store.
        full = Tail(deployment.api_url, last_event_id=0).open()
        await eventually(lambda: len(full.messages()) >= len(expected), 30, message="a full read")
        position = {key: e.id for key, e in zip(keys(full.messages()), full.messages(), strict=True)}
        got = set(keys(first.messages()) + keys(second.messages()))
        missing = sorted(position[key] or 0 for key in expected if key not in got)
        raise AssertionError(
            f"{len(missing)} events never streamed, at positions {missing[:50]}; the first stream ended at "
            f"{first.last_id()}, the second started at {second.start}"
        ) from None
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
    # A client that went away leaves nothing behind in the api.
    await eventually(lambda: metric(deployment, "eventagg_tail_streams") == 0, 10, message="streams gone")
    for process in (consumer, *others):
        assert process.terminate() == 0


def rss_bytes(process: Process) -> int:
    for line in Path(f"/proc/{process.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metric(deployment: Deployment, line_start: str) -> float:
    text = api_get(deployment, "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def hub_reads(deployment: Deployment) -> float:
    return metric(deployment, 'eventagg_tail_reads_total{kind="new"}')


def notices(deployment: Deployment) -> float:
    return metric(deployment, "eventagg_commit_notices_total")


def open_raw_stream(deployment: Deployment, query: str, receive_buffer: int | None = None) -> socket.socket:
    """A stream on a plain socket: it reads the answer's head and then only when the test says so."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", deployment.api_port))
    sock.sendall(f"GET /events/stream?{query} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
    sock.settimeout(10)
    head = b""
    while b": from " not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk or data.endswith(b"0\r\n\r\n"):
            return data + chunk
        data += chunk


async def publish_big(amqp: AbstractRobustConnection, exchange: str, count: int, size: int) -> None:
    channel = await amqp.channel(publisher_confirms=True)
    try:
        target = await channel.get_exchange(exchange)
        filler = "x" * size
        for start in range(0, count, 100):
            events = [
                {
                    "topic": "tail.big",
                    "event_id": f"big-{n}",
                    "timestamp": "2026-05-01T08:00:00Z",
                    "source": "tail-test",
                    "payload": {"n": n, "filler": filler},
                }
                for n in range(start, min(start + 100, count))
            ]
            await target.publish(aio_pika.Message(json.dumps(events).encode(), delivery_mode=2), "tail.big")
    finally:
        await channel.close()


async def test_a_client_that_never_reads_ends_with_an_overflow_event_and_the_api_memory_stays_bounded(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    _, api = await start_pipeline(procs, amqp, api_env={"TAIL_BUFFER_BYTES": "262144"})
    idle = [open_raw_stream(deployment, "topic=tail.quiet") for _ in range(200)]
    stuck = open_raw_stream(deployment, "topic=tail.big", receive_buffer=4096)
    before = rss_bytes(api)
    reads_before, notices_before, started = hub_reads(deployment), notices(deployment), time.monotonic()
    count, size = 20_000, 2000  # 40 MB through the api, 200 times the buffer of the stream that never reads
    await publish_big(amqp, deployment.exchange, count, size)
    await eventually(lambda: counters(deployment)["unique_processed"] == count, 90, message="all stored")
    metrics = await eventually(
        lambda: (
            (text := api_get(deployment, "/metrics").text)
            and "eventagg_tail_overflows_total 1.0" in text
            and text
        ),
        30,
        message="the stream that never reads overflowed",
    )
    assert "eventagg_tail_streams 200.0" in metrics  # the idle ones stay, the full one is dropped
    # One reader for all 201 streams: a read per notice (plus a page per 1,000 rows and the idle reads),
    # where a stream polling on its own would have made at least 201 per notice.
    reads = hub_reads(deployment) - reads_before
    bound = notices(deployment) - notices_before + count // 1000 + int(time.monotonic() - started) + 5
    assert 0 < reads <= bound
    grown = rss_bytes(api) - before
    print(
        f"api RSS {before / 2**20:.1f} MiB with 201 streams open, "
        f"grew {grown / 2**20:.1f} MiB over {count} events; the hub read {reads:g} times (bound {bound:g})"
    )
    assert grown < 24 * 2**20

    raw = await asyncio.to_thread(read_to_end, stuck)
    ids = [int(found) for found in re.findall(rb"\nid: (\d+)\ndata: \{\"topic\"", b"\n" + raw)]
    overflow = re.search(rb"id: (\d+)\nevent: overflow\ndata: (.*)\n", raw)
    assert overflow is not None, raw[-500:]
    told = json.loads(overflow.group(2))
    assert told["resume_from"] == int(overflow.group(1)) == ids[-1]
    assert "too slowly" in told["reason"]
    assert 0 < len(ids) < count
    rest = Tail(deployment.api_url, {"topic": "tail.big"}, last_event_id=told["resume_from"]).open()
    await eventually(lambda: len(rest.messages()) >= count - len(ids), 60, message="resumed to the end")
    resumed = [int(e.data["payload"]["n"]) for e in rest.messages()]
    assert resumed == list(range(len(ids), count))
    await rest.drop()
    for sock in (*idle, stuck):
        sock.close()


def printed(process: Process) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]


async def test_the_publisher_tail_prints_each_event_of_its_topic_once_as_it_is_stored(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    topic = load.generate(10, 0.0, 4, 5).events[0].topic
    tail = procs.start("publisher", "tail", "--topic", topic, "--after", "0")
    for seed in (5, 6):  # the second load comes while the tail is running
        assert start_load(procs, 2000, seed, "--topics", "4").wait(120) == 0
        await eventually(
            lambda: len(printed(tail)) >= len(all_events(deployment, topic)), 30, message="printed"
        )
        assert printed(tail) == all_events(deployment, topic)
    tail.popen.send_signal(signal.SIGINT)
    assert tail.wait(10) == 0
