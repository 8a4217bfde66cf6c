"""Read-your-writes at the speed of a commit, against real processes: a lone event is committed at once and a
burst still fills batches; `?wait=stored` hears of commits from the consumers' notices on every api replica,
and answers 200 only once the store has the events, even while those notices are cut off."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from aio_pika import ExchangeType
from aio_pika.abc import AbstractRobustConnection
from prometheus_client.parser import text_string_to_metric_families

from store.postgres.notices import LISTENER_APPLICATION
from store.sqlite import notices
from tests.harness.cleanups import Cleanups
from tests.harness.pipeline import counters, settled, start_pipeline
from tests.harness.probes import consumer_count, queue_depth
from tests.harness.processes import Processes, all_events, free_port
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def bucket(found: Samples, name: str, le: str) -> float:
    return found[(f"{name}_bucket", (("le", le),))]


def reads(found: Samples, reason: str) -> float:
    return found[("eventagg_receipt_reads_total", (("reason", reason),))]


def event(event_id: str, topic: str = "group.a") -> dict[str, Any]:
    return {"topic": topic, "event_id": event_id, "timestamp": "2026-05-01T08:00:00Z", "source": "group"}


async def post_stored(url: str, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await client.post("/publish", params={"wait": "stored"}, content=json.dumps(body).encode())


async def notices_up(url: str) -> bool:
    return samples(url)[("eventagg_commit_notices_up", ())] == 1


async def test_a_lone_event_is_committed_without_waiting_for_company_and_a_burst_still_fills_batches(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    port = free_port()
    metrics = f"http://127.0.0.1:{port}"
    consumer, _ = await start_pipeline(procs, amqp, consumer_env={"METRICS_PORT": str(port)})
    assert consumer is not None
    wait = "eventagg_consumer_batch_wait_seconds"

    # Ten lone events, each sent once the previous one is stored: ten batches of one message each.
    for n in range(10):
        answer = await post_stored(deployment.api_url, [event(f"lone-{n}")])
        assert (answer.status_code, answer.json()["new"]) == (200, 1)
    lone = await eventually(
        lambda: (found := samples(metrics))[(f"{wait}_count", ())] == 10 and found, 30, message="10 commits"
    )
    assert lone[("eventagg_consumer_batch_messages_count", ())] == 10
    assert bucket(lone, "eventagg_consumer_batch_messages", "1.0") == 10
    # From the delivery in hand to the start of its commit. The earlier batcher closed a batch only after a
    # lull of a quarter of BATCH_WAIT (10 ms): not one of ten under 2.5 ms. Now nothing waits, a few loop
    # steps; most of ten, not all: on a shared machine a process is sometimes descheduled for longer.
    assert bucket(lone, wait, "0.0025") >= 5, {k: v for k, v in lone.items() if k[0].startswith(wait)}

    # A burst: 3,000 single-event messages queued while the consumer is stopped, then drained.
    assert consumer.terminate() == 0
    published = procs.publish("--count", "3000", "--duplicates", "0", "--envelope-size", "1", "--seed", "3")
    assert (published["exit_code"], published["confirmed"]) == (0, 3000)
    # Each commit 250 ms slower (a slow disk; on the store's thread, so deliveries keep arriving): the
    # store is the bottleneck (a broker delivering 1,100 messages/s fills a batch meanwhile), and each batch
    # must be what piled up, up to BATCH_SIZE.
    procs.consumer(METRICS_PORT=str(port), EVENTAGG_FAULT_SLOW_COMMIT="0.25")
    await settled(deployment, amqp, 3010)
    burst = await eventually(
        lambda: (found := samples(metrics))[("eventagg_consumer_batch_messages_sum", ())] == 3000 and found,
        30,
        message="the burst's commits in the metrics",
    )
    batches = burst[("eventagg_consumer_batch_messages_count", ())]
    full = batches - bucket(burst, "eventagg_consumer_batch_messages", "100.0")
    # While one batch commits the next fills from what arrives meanwhile, up to BATCH_SIZE (256): 3,000
    # messages take 12 batches when all but the last are full (and the first, taken before the rest came,
    # may be small); a commit per arrival would take hundreds.
    assert batches <= 20, batches
    assert full >= 10, (batches, full)
    assert bucket(burst, "eventagg_consumer_batch_messages", "256.0") == batches  # never past BATCH_SIZE
    assert counters(deployment)["unique_processed"] == 3010


async def cut_the_stores_notices(procs: Processes) -> None:
    """Cut the api off from the notices the store's writers send (store/*/notices.py): on PostgreSQL its
    LISTEN connection terminated by the server; on SQLite its socket removed from the notices directory."""
    deployment = procs.deployment
    if deployment.database_url is not None:
        conn = await asyncpg.connect(deployment.database_url)
        try:
            cut = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()",
                LISTENER_APPLICATION,
            )
        finally:
            await conn.close()
    else:
        sockets = list(notices.directory(deployment.db_path).glob(f"*{notices.SOCKET_SUFFIX}"))
        for path in sockets:
            path.unlink()
        cut = len(sockets)
    assert cut == 1, cut


def cut_proxy(procs: Processes, cleanups: Cleanups) -> tuple[FreezableProxy, str]:
    broker = urlsplit(procs.deployment.amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672).start()
    cleanups.add(proxy.close)
    return proxy, f"amqp://guest:guest@127.0.0.1:{proxy.port}/"


@pytest.mark.backends("sqlite", "postgres")
async def test_wait_stored_answers_after_the_commit_while_the_apis_notices_are_cut_off(
    procs: Processes, amqp: AbstractRobustConnection, cleanups: Cleanups, backend: str
) -> None:
    deployment = procs.deployment
    proxy, via_proxy = cut_proxy(procs, cleanups)
    # The api reconnects (and listens again) only after 60 s: its notices stay cut off for the whole test.
    api_env = {"AMQP_URL": via_proxy, "PUBLISH_TIMEOUT": "45", "RECONNECT_INTERVAL": "60"}
    # The store's directory, as a deployment's volume: a SQLite api binds its notices socket in it.
    deployment.db_path.parent.mkdir(parents=True, exist_ok=True)
    await start_pipeline(procs, amqp, with_consumer=False, api_env=api_env)
    await eventually(lambda: notices_up(deployment.api_url), 30, message="the api subscribed to notices")
    if deployment.database_url is None:
        sockets = notices.directory(deployment.db_path)
        await eventually(lambda: any(sockets.glob("*.sock")), 30, message="the api's notices socket")

    waiting = asyncio.create_task(post_stored(deployment.api_url, [event("cut-1"), event("cut-2")]))

    async def queued() -> bool:
        return await queue_depth(amqp, deployment.queue) == 1

    await eventually(queued, 30, message="the request's message in the queue")
    # Both paths of the notices: the broker's, and the one the store's writers send on.
    proxy.cut()
    await cut_the_stores_notices(procs)
    await eventually(
        lambda: samples(deployment.api_url)[("eventagg_commit_notices_up", ())] == 0,
        30,
        message="the api's notices down",
    )
    # Nothing is committed yet: the request keeps waiting, reading the store on a short timer meanwhile.
    await eventually(lambda: reads(samples(deployment.api_url), "polled") >= 5, 30, message="polling")
    assert not waiting.done()
    assert counters(deployment)["received"] == 0

    procs.consumer()
    answer = await asyncio.wait_for(waiting, 40)
    stored_then = counters(deployment)

    assert answer.status_code == 200, answer.text
    assert (answer.json()["new"], answer.json()["duplicates"], answer.json()["pending"]) == (2, 0, 0)
    assert stored_then["unique_processed"] == 2
    assert {e["event_id"] for e in all_events(deployment)} == {"cut-1", "cut-2"}
    after = samples(deployment.api_url)
    assert after[("eventagg_commit_notices_up", ())] == 0  # answered from the store, not from a notice
    assert reads(after, "notice") == 0
    assert after[("eventagg_receipts_found_total", (("source", "notice"),))] == 0


@pytest.mark.backends("sqlite", "postgres")
async def test_without_the_brokers_notices_the_stores_own_answer_wait_stored_at_once(
    procs: Processes, amqp: AbstractRobustConnection, backend: str
) -> None:
    """The notices the store's writers send themselves (NOTIFY on PostgreSQL, a datagram on SQLite) answer
    waiting requests alone. The broker's notices are made impossible: the notices exchange is declared first
    with another type, so neither the consumer nor the api can declare theirs."""
    deployment = procs.deployment
    exchange = f"{deployment.exchange}.commits"
    channel = await amqp.channel()
    await channel.declare_exchange(exchange, ExchangeType.DIRECT, durable=False, auto_delete=False)
    try:
        await stored_without_broker_notices(procs, amqp)
    finally:
        await channel.exchange_delete(exchange)
        await channel.close()


async def stored_without_broker_notices(procs: Processes, amqp: AbstractRobustConnection) -> None:
    deployment = procs.deployment
    # PUBLISH_TIMEOUT is also how long after the notices came up the api reads the store once for every new
    # request anyway (a commit may have come before them): kept short, and waited out.
    await start_pipeline(procs, amqp, api_env={"PUBLISH_TIMEOUT": "3"})
    await eventually(lambda: notices_up(deployment.api_url), 30, message="the store's notices up")
    up_by = time.monotonic()
    await eventually(lambda: time.monotonic() - up_by >= 3, 10, message="past the replay window")
    for n in range(5):
        answer = await post_stored(deployment.api_url, [event(f"store-{n}"), event(f"store-{n}", "group.b")])
        assert answer.status_code == 200, answer.text
        assert (answer.json()["new"], answer.json()["duplicates"], answer.json()["pending"]) == (2, 0, 0)
    found = samples(deployment.api_url)
    assert found[("eventagg_commit_notices_up", ())] == 1
    # Every one of the ten receipts' figures came with a notice; the store was never read (a lost notice
    # would have cost a read at the request's deadline).
    assert found[("eventagg_receipts_found_total", (("source", "notice"),))] == 10
    assert found[("eventagg_receipts_found_total", (("source", "store"),))] == 0
    assert sum(reads(found, reason) for reason in ("notice", "polled", "recheck", "deadline")) == 0
    assert counters(deployment)["unique_processed"] == 10
    # The broker's notices never came up (the declare refused), on either side.
    logs = {p.name: p.read_text(errors="replace") for p in deployment.logs.glob("*.log")}
    assert any("commit notices subscribed" in text for text in logs.values()) is False, logs.keys()


@pytest.mark.backends("sqlite", "postgres")
async def test_two_api_replicas_hear_every_commit_and_twenty_waiting_copies_count_nineteen_duplicates(
    procs: Processes, amqp: AbstractRobustConnection, backend: str
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    second = free_port()
    procs.api(API_PORT=str(second))
    urls = [deployment.api_url, f"http://127.0.0.1:{second}"]
    for url in urls:
        await eventually(lambda url=url: notices_up(url), 30, message=f"{url} subscribed to notices")

    body = [event("the-one", "group.replicas")]
    replies = await asyncio.gather(*(post_stored(urls[n % 2], body) for n in range(20)))

    assert [r.status_code for r in replies] == [200] * 20
    figures = sorted((r.json()["new"], r.json()["duplicates"], r.json()["pending"]) for r in replies)
    assert figures == [(0, 1, 0)] * 19 + [(1, 0, 0)]
    assert counters(deployment)["duplicate_dropped"] == 19
    for url in urls:
        found = samples(url)
        # Each replica heard the commits through its own subscription (its queue on the broker; its LISTEN
        # on PostgreSQL) and answered from the figures they carry (or read the store when one named a
        # receipt without them); it never had to fall back to polling.
        assert found[("eventagg_commit_notices_total", ())] >= 1
        assert found[("eventagg_receipts_found_total", (("source", "notice"),))] >= 1
        assert reads(found, "polled") == 0
    assert await consumer_count(amqp, deployment.queue) == 1
