"""The consume path's edge cases with real processes: a batch is acked only after its own commit even while
the next one is in hand, and a connection lost mid-batch drops its settlements and dedup absorbs the rest."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from aio_pika.abc import AbstractRobustConnection

from publisher.load import generate
from tests.harness.cleanups import Cleanups
from tests.harness.pipeline import counters, settled, start_pipeline
from tests.harness.probes import queue_depth
from tests.harness.processes import Process, Processes, all_events
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually

FAST_RETRY = {"RETRY_INITIAL": "0.1", "RETRY_MAX": "0.4"}


def commit_failures(consumer: Process) -> int:
    return len(re.findall(r"store unavailable, consumption paused", consumer.output()))


def unsettled(consumer: Process) -> int:
    found = re.findall(r"consumer stopped .*unsettled=(\d+)", consumer.output())
    assert len(found) == 1, consumer.output()
    return int(found[0])


def keys(count: int, seed: int) -> set[tuple[str, str]]:
    return {e.key() for e in generate(count, 0, 8, seed).events}


async def test_a_store_fault_on_the_next_batch_leaves_it_unacked_while_the_committed_one_is_acked(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp, with_consumer=False)
    published = procs.publish("--count", "20", "--duplicates", "0", "--seed", "11", "--envelope-size", "1")
    assert (published["exit_code"], published["confirmed"]) == (0, 20)
    assert await queue_depth(amqp, deployment.queue) == 20
    flag = tmp_path / "fail-commits"

    # Both batches of ten are in hand at once (prefetch 100); the first one's commit creates the flag, so
    # the second, decoded while the first was committing, fails from then on.
    consumer = procs.consumer(
        **FAST_RETRY,
        BATCH_SIZE="10",
        BATCH_WAIT="2",
        PREFETCH="100",
        EVENTAGG_FAULT_COMMIT=f"ioerror:{flag}",
        EVENTAGG_FAULT_FAIL_AFTER_COMMIT="1",
    )
    await eventually(lambda: commit_failures(consumer) >= 3, 60, message="the second batch failing")
    assert counters(deployment)["received"] == 10
    assert await queue_depth(amqp, deployment.queue) == 0

    consumer.kill9()

    # Exactly the second batch comes back: the first one's multiple-ack covered its own ten only.
    async def requeued() -> bool:
        return await queue_depth(amqp, deployment.queue) == 10

    await eventually(requeued, 30, message="the unacked batch back in the queue")
    flag.unlink()
    procs.consumer()
    assert await settled(deployment, amqp, 20) == {
        "received": 20,
        "unique_processed": 20,
        "duplicate_dropped": 0,
        "invalid": 0,
        "conflicts": 0,
    }
    assert {(e["topic"], e["event_id"]) for e in all_events(deployment)} == keys(20, 11)


async def test_a_connection_lost_mid_batch_drops_its_settlements_and_the_redeliveries_are_deduplicated(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path, cleanups: Cleanups
) -> None:
    deployment = procs.deployment
    broker = urlsplit(deployment.amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672).start()
    cleanups.add(proxy.close)
    flag = tmp_path / "fail-commits"
    flag.touch()
    consumer, _ = await start_pipeline(
        procs,
        amqp,
        consumer_env={
            **FAST_RETRY,
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
            "RECONNECT_INTERVAL": "0.5",
            "EVENTAGG_FAULT_COMMIT": f"ioerror:{flag}",
        },
    )
    assert consumer is not None
    published = procs.publish("--count", "50", "--duplicates", "0", "--seed", "12", "--envelope-size", "1")
    assert (published["exit_code"], published["confirmed"]) == (0, 50)

    # All fifty delivered and held, their batch failing to commit: then the connection drops.
    async def all_in_hand() -> bool:
        return await queue_depth(amqp, deployment.queue) == 0 and commit_failures(consumer) >= 2

    await eventually(all_in_hand, 60, message="every delivery in hand")
    proxy.cut()
    await eventually(
        lambda: "consuming again after the channel reopened" in consumer.output(),
        60,
        message="reconnected",
    )
    flag.unlink()

    # The fifty held from the dead channel are committed, their acks dropped; the fifty redelivered on
    # the new channel are duplicates, acked there.
    assert await settled(deployment, amqp, 100) == {
        "received": 100,
        "unique_processed": 50,
        "duplicate_dropped": 50,
        "invalid": 0,
        "conflicts": 0,
    }
    assert {(e["topic"], e["event_id"]) for e in all_events(deployment)} == keys(50, 12)
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 0
    assert consumer.terminate() == 0
    assert unsettled(consumer) == 50
