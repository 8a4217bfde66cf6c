"""Crash scenarios: real processes, real SIGKILL, the real broker; each ends with the crash checker.

Every scenario publishes a known workload with the CLI's `--confirmed-log`, injects its faults while the
stream runs (each one asserts that it really landed mid-stream), lets the pipeline settle and runs
`python -m publisher --check`: nothing confirmed is lost, nothing unexpected is stored, counters are exact
and the dead-letter queue holds exactly the invalid messages. `make crash` runs them at CRASH_SCALE=5.

Store backends: the scenarios whose meaning depends on the store run on SQLite and on PostgreSQL (a fresh
schema per test): consumer kill -9 (including between commit and ack), SIGTERM, poison messages, commit I/O
errors through the fault hook, and the two api kills (the api reads the store). The others stay on SQLite,
the default, to keep `make test` short: a full disk (a tmpfs under the SQLite file) and a locked store
(an SQLite write lock) exist only there, and the crash loop, the publisher kill and the broker kills are
about the broker and the publisher, which do the same whatever store is behind the consumer. PostgreSQL's
own scenarios (competing consumers, the database killed) are in tests/test_competing_consumers.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from contract import event as wire
from tests.harness.broker import Broker
from tests.harness.crash import Checked, Workload, budget, scaled
from tests.harness.pipeline import counters, past, start_pipeline
from tests.harness.probes import queue_depth
from tests.harness.processes import Deployment, Process, Processes, api_get
from tests.harness.waiting import eventually

pytestmark = pytest.mark.crash

KILLED = -9
BOTH_BACKENDS = pytest.mark.backends("sqlite", "postgres")
FAST_RETRY = {"RETRY_INITIAL": "0.1", "RETRY_MAX": "0.8"}


def still_streaming(checked: Checked) -> bool:
    """Some of the workload is not stored yet (`received` cannot tell: redeliveries count in it)."""
    return counters(checked.procs.deployment)["unique_processed"] < checked.workload.unique


def commit_failures(consumer: Process) -> list[float]:
    """The backoff delays the consumer logged while its store was failing, in order."""
    return [float(d) for d in re.findall(r"store unavailable.*retrying in ([\d.]+)s", consumer.output())]


def assert_backoff(delays: list[float]) -> None:
    assert delays == sorted(delays), f"the backoff never shrinks while failing: {delays}"
    assert delays[-1] > delays[0], f"the backoff grows: {delays}"


@BOTH_BACKENDS
async def test_consumer_killed_at_random_moments_and_between_commit_and_ack_loses_nothing(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    rng = random.Random(20)
    checked = Checked(procs, Workload(scaled(30000), seed=99))
    total = checked.workload.count
    # Small batches and single-event messages stretch the stream out so that every kill lands inside it.
    env = {"BATCH_SIZE": "20"}
    consumer, _ = await start_pipeline(procs, amqp, consumer_env=env)
    assert consumer is not None
    publisher = checked.publish("--envelope-size", "1")

    random_kills = window_kills = 0
    # At least 20 per stream; `make crash` raises that with the stream (each restart costs a process start).
    while random_kills < max(20, scaled(8)):
        taken = counters(deployment)["received"]
        if (random_kills + window_kills) % 4 == 3:
            # Deterministic: the consumer SIGKILLs itself right after a commit, before any of its acks.
            await eventually(lambda c=consumer: not c.alive, 60, 0.01, message="the fault hook killed it")
            assert consumer.popen.returncode == KILLED
            assert "SIGKILL after commit" in consumer.output()
            window_kills += 1
        else:
            await past(deployment, taken + rng.randint(20, 400))
            consumer.kill9()
            random_kills += 1
        assert still_streaming(checked), "the stream ended before the kill; proves nothing"
        if (random_kills + window_kills) % 4 == 3:
            consumer = procs.consumer(**env, EVENTAGG_FAULT_KILL_AFTER_COMMIT=str(rng.randint(1, 5)))
        else:
            consumer = procs.consumer(**env)

    assert publisher.wait(budget(300)) == 0, publisher.output()
    await checked.settle(amqp, 300)
    await checked.check(amqp, "consumer kill -9", f"{random_kills} random + {window_kills} commit/ack")
    c = counters(deployment)
    # Redeliveries after a kill count as received and duplicate, never as a second stored event.
    assert c["received"] >= total
    assert c["duplicate_dropped"] == c["received"] - checked.workload.unique
    assert consumer.terminate() == 0


@BOTH_BACKENDS
async def test_consumer_killed_while_retention_sweeps_loses_nothing_and_expired_keys_stay_known(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    rng = random.Random(21)
    checked = Checked(procs, Workload(scaled(4000), seed=77))
    # Events expire and are swept while the stream, its re-sends and the kills go on: each commit held 50 ms
    # (at most 400 events/s), so the stream outlasts RETENTION on a fast machine too (unslowed, a quiet
    # machine stored all 4,000 within 5 s, and nothing had expired by the check).
    env = {
        "BATCH_SIZE": "20",
        "RETENTION": "5s",
        "RETENTION_SWEEP_INTERVAL": "0.5",
        "EVENTAGG_FAULT_SLOW_COMMIT": "0.05",
    }
    consumer, _ = await start_pipeline(procs, amqp, consumer_env=env)
    assert consumer is not None
    publisher = checked.publish("--envelope-size", "1")

    kills = 0
    while kills < max(8, scaled(4)):
        taken = counters(deployment)["received"]
        await past(deployment, taken + rng.randint(100, 400))
        consumer.kill9()
        kills += 1
        assert still_streaming(checked), "the stream ended before the kill; proves nothing"
        consumer = procs.consumer(**env)

    assert publisher.wait(budget(300)) == 0, publisher.output()
    await checked.settle(amqp, 300)
    result = await checked.check(
        amqp, "consumer kill -9, RETENTION 5s", f"{kills} kills, sweeps every 0.5 s", expiring=True
    )
    assert "retention sweep removed" in "".join(p.output() for p in procs.all if p.module == "consumer")
    c = counters(deployment)
    assert c["duplicate_dropped"] == c["received"] - checked.workload.unique
    assert result["counters"]["unique_processed"] == checked.workload.unique
    assert consumer.terminate() == 0


async def test_a_crash_loop_redelivering_one_batch_25_times_dead_letters_nothing(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(200, seed=12, duplicates=0.0))
    await start_pipeline(procs, amqp, with_consumer=False)
    assert checked.publish("--envelope-size", "1").wait(budget(120)) == 0
    # Every run commits its first batch and dies before acking it, so the head of the queue comes back
    # every time: past RabbitMQ 4's default delivery limit of 20, which would dead-letter valid events.
    crash_loop = {"BATCH_SIZE": "10", "PREFETCH": "10", "EVENTAGG_FAULT_KILL_AFTER_COMMIT": "1"}
    for _ in range(25):
        consumer = procs.consumer(**crash_loop)
        assert consumer.wait(60) == KILLED, consumer.output()
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 0

    channel = await amqp.channel()
    queue = await channel.declare_queue(deployment.queue, passive=True)
    head = await queue.get(no_ack=False, timeout=10)
    assert head is not None
    deliveries = int((head.headers or {}).get("x-delivery-count", 0))
    assert deliveries >= 25, f"the head message was delivered {deliveries} times before"
    await head.reject(requeue=True)
    await channel.close()

    procs.consumer()
    await checked.settle(amqp)
    await checked.check(amqp, "crash loop on one batch", "25 kills after commit")
    c = counters(deployment)
    assert c["duplicate_dropped"] == c["received"] - 200 >= 24


async def test_an_unexpected_error_after_a_commit_stops_the_consumer_with_it_and_loses_nothing(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    """An error nobody foresaw, after batch 2 committed and before its acks, while batch 3 is already on its
    way (it awaits batch 2 to order its acks): the consumer stops with that error, exit code 1 and its
    traceback, instead of ending its loop with nothing said and exit code 0; the restart loses nothing."""
    checked = Checked(procs, Workload(200, seed=13, duplicates=0.0))
    await start_pipeline(procs, amqp, with_consumer=False)
    assert checked.publish("--envelope-size", "1").wait(budget(120)) == 0
    consumer = procs.consumer(BATCH_SIZE="10", PREFETCH="50", EVENTAGG_FAULT_RAISE_AFTER_COMMIT="2")
    assert consumer.wait(60) == 1, consumer.output()
    assert "InjectedError: fault injection: an error after commit 2" in consumer.output()

    procs.consumer()
    await checked.settle(amqp)
    await checked.check(amqp, "unexpected error after a commit", "error after commit 2, then a restart")


async def test_publisher_killed_mid_stream_and_run_again_takes_effect_once(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(scaled(20000), seed=7))
    total = checked.workload.count
    await start_pipeline(procs, amqp)

    for fraction in (0.2, 0.5):
        publisher = checked.publish("--envelope-size", "1")
        await eventually(
            lambda f=fraction: checked.confirmed_lines() >= f * total,
            120,
            0.01,
            message="publisher confirmed part of the stream",
        )
        publisher.kill9()
        assert checked.confirmed_lines() < total, "the publisher finished before the kill; proves nothing"

    rerun = checked.publish("--envelope-size", "1")
    assert rerun.wait(budget(300)) == 0, rerun.output()
    await checked.settle(amqp)
    await checked.check(amqp, "publisher kill -9, re-run", "2 publisher kills")
    c = counters(deployment)
    # The second and third runs re-sent what the killed ones had sent: all of it counted, none of it stored.
    assert c["received"] > total
    assert c["duplicate_dropped"] == c["received"] - checked.workload.unique


async def test_broker_killed_mid_stream_loses_nothing_confirmed(
    broker: Broker, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    if not broker.killable:
        pytest.skip("the broker from AMQP_URL cannot be killed by the tests")
    deployment = procs.deployment
    checked = Checked(procs, Workload(scaled(20000), seed=1234))
    await start_pipeline(
        procs,
        amqp,
        consumer_env={"BATCH_SIZE": "50", "RECONNECT_INTERVAL": "0.5"},
        api_env={"RECONNECT_INTERVAL": "0.5"},
    )
    publisher = checked.publish("--envelope-size", "1", MAX_ATTEMPTS="30")
    # Mid-stream for the publisher: it outruns the consumer, so its own confirmed log says how far it got.
    await eventually(
        lambda: checked.confirmed_lines() >= checked.workload.count // 6,
        120,
        0.01,
        message="publisher confirmed a sixth of the stream",
    )

    # RabbitMQ 3.10 saves its quorum-queue registry ~0.5 s after a change; a node killed before that loses
    # queues declared in that window, which is a broker bug (rabbitmq/ra#443), not what this test is about.
    for queue in (deployment.queue, deployment.dead_letter_queue):
        broker.wait_for_quorum_queue_registration(queue)
    broker.kill()
    assert publisher.alive, "the publisher finished before the kill; proves nothing"
    assert still_streaming(checked)
    broker.start()

    assert publisher.wait(budget(300)) == 0, publisher.output()
    await checked.settle(amqp, 180)
    await checked.check(amqp, "broker kill -9", "1 broker kill")


@BOTH_BACKENDS
async def test_api_killed_right_after_answering_a_publish_loses_none_of_it(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(2000, seed=4, duplicates=0.0))
    events = checked.workload.events
    # No consumer yet: the 2,000 events exist only in the broker when the api dies.
    _, api = await start_pipeline(procs, amqp, with_consumer=False)
    body = wire.encode(events)
    async with httpx.AsyncClient(base_url=deployment.api_url, timeout=30) as client:
        response = await client.post("/publish", content=body, headers={"content-type": "application/json"})
    api.kill9()
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2000
    checked.record_confirmed(events)

    procs.consumer()
    procs.api()
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api back")
    await checked.settle(amqp)
    await checked.check(amqp, "api kill -9 after 200", "1 api kill")
    assert counters(deployment)["received"] == 2000


@BOTH_BACKENDS
async def test_api_killed_mid_http_stream_loses_nothing_confirmed(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(scaled(20000), seed=31))
    _, api = await start_pipeline(procs, amqp)
    publisher = checked.publish("--via", "http", MAX_ATTEMPTS="40")
    await past(deployment, checked.workload.count // 10)

    api.kill9()
    assert publisher.alive, "the stream ended before the kill; proves nothing"
    procs.api()

    assert publisher.wait(budget(300)) == 0, publisher.output()
    await checked.settle(amqp)
    await checked.check(amqp, "api kill -9 mid HTTP stream", "1 api kill")


@BOTH_BACKENDS
async def test_commit_io_errors_pause_consumption_then_everything_is_stored_once(
    procs: Processes, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(2000, seed=5))
    fault = tmp_path / "fail-commits"
    fault.touch()
    consumer, _ = await start_pipeline(
        procs,
        amqp,
        consumer_env={**FAST_RETRY, "EVENTAGG_FAULT_COMMIT": f"ioerror:{fault}"},
        api_env={"CONSUMER_STALL_SECONDS": "1"},
    )
    assert consumer is not None
    publisher = checked.publish("--envelope-size", "1")
    assert publisher.wait(budget(120)) == 0, publisher.output()

    await eventually(lambda: len(commit_failures(consumer)) >= 5, 30, message="the consumer retried")
    assert_backoff(commit_failures(consumer))
    health = api_get(deployment, "/health").json()
    assert (health["status"], health["consumer"]["status"]) == ("degraded", "stalled"), health
    assert "disk I/O error" in health["consumer"]["detail"]
    assert counters(deployment)["received"] == 0, "a failed commit left a trace"
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 0

    fault.unlink()
    await checked.settle(amqp)
    await checked.check(amqp, "commit I/O errors", f"{len(commit_failures(consumer))} failed commits")
    assert counters(deployment)["received"] == 2000, "nothing was redelivered: the batch stayed in hand"
    health = api_get(deployment, "/health").json()
    # "idle" once the last commit is older than the 1 s stall window: nothing waits, nothing is wrong.
    assert (health["status"], health["consumer"]["status"] in ("ok", "idle")) == ("healthy", True), health
    assert consumer.terminate() == 0


@pytest.fixture
def tiny_disk(deployment: Deployment) -> Iterator[Path]:
    """The store's directory on a small tmpfs of its own, so that the disk can really fill up.

    Not much smaller: the WAL grows to about 80 MB between checkpoints (contract/schema.py), and after the
    disk is freed the backlog must fit in it.
    """
    directory = deployment.db_path.parent
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs for a real full disk (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def disk_usage(directory: Path) -> str:
    stat = os.statvfs(directory)
    files = {p.name: p.stat().st_size for p in directory.iterdir()}
    return f"{stat.f_bavail * stat.f_frsize} bytes free, files {files}"


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = directory / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()
    return filler


async def test_a_full_disk_acks_nothing_dead_letters_nothing_and_recovers(
    procs: Processes, amqp: AbstractRobustConnection, tiny_disk: Path
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(2000, seed=6))
    consumer, _ = await start_pipeline(
        procs, amqp, consumer_env=FAST_RETRY, api_env={"CONSUMER_STALL_SECONDS": "1"}
    )
    assert consumer is not None
    await eventually(lambda: deployment.db_path.exists(), 30, message="store created")
    filler = fill(tiny_disk)

    publisher = checked.publish("--envelope-size", "1")
    assert publisher.wait(budget(120)) == 0, publisher.output()
    await eventually(lambda: len(commit_failures(consumer)) >= 4, 30, message="the consumer retried")
    assert "database or disk is full" in consumer.output()
    assert_backoff(commit_failures(consumer))
    # The consumer cannot even write its status file now; the api infers the stall from the queue.
    await eventually(
        lambda: api_get(deployment, "/health").json()["status"] == "degraded", 30, message="degraded"
    )
    assert counters(deployment)["received"] == 0

    # Stopped while failing: everything it held goes back to the queue, nothing acked or dead-lettered.
    started = time.monotonic()
    assert consumer.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5

    async def all_back_in_the_queue() -> bool:
        return await queue_depth(amqp, deployment.queue) == checked.workload.count

    await eventually(all_back_in_the_queue, 30, message="every message back in the queue")
    assert await queue_depth(amqp, deployment.dead_letter_queue) == 0

    filler.unlink()
    procs.consumer(**FAST_RETRY)
    try:
        await checked.settle(amqp)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the disk now: {disk_usage(tiny_disk)}") from None
    await checked.check(amqp, "disk full (tmpfs)", f"{len(commit_failures(consumer))} failed commits")


async def test_a_locked_store_pauses_consumption_without_dead_lettering_or_losing_events(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(500, seed=5))
    consumer, _ = await start_pipeline(procs, amqp, consumer_env=FAST_RETRY)
    assert consumer is not None
    await eventually(lambda: deployment.db_path.exists(), 30, message="store created")

    blocker = sqlite3.connect(deployment.db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        assert checked.publish().wait(budget(120)) == 0
        await eventually(lambda: len(commit_failures(consumer)) >= 2, 30, message="the consumer retried")
        health = api_get(deployment, "/health").json()
        assert (health["status"], health["consumer"]["status"]) == ("degraded", "stalled"), health
        assert "database is locked" in health["consumer"]["detail"]
        assert await queue_depth(amqp, deployment.dead_letter_queue) == 0
        assert counters(deployment)["received"] == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    await checked.settle(amqp)
    await checked.check(amqp, "store locked", f"{len(commit_failures(consumer))} failed commits")
    assert counters(deployment)["duplicate_dropped"] == 100
    health = api_get(deployment, "/health").json()
    assert (health["status"], health["consumer"]["status"]) == ("healthy", "ok")


POISON = (
    b"not json at all",
    b"\xff\xfe\x00 not utf-8",
    b"42",
    b"{}",
    b'{"topic": "demo.orders", "event_id": "p", "timestamp": "yesterday", "source": "s"}',
    b'{"topic": "demo.#", "event_id": "p", "timestamp": "2026-01-01T00:00:00Z", "source": "s"}',
    b'[{"topic": "demo.orders", "event_id": "ok", "timestamp": "2026-01-01T00:00:00Z", "source": "s"}, 7]',
    b'{"topic": "demo.orders", "event_id": "p", "timestamp": "2026-01-01T00:00:00Z", "source": "s", '
    b'"payload": {"x": NaN}}',
)


@BOTH_BACKENDS
async def test_poison_messages_mixed_into_the_stream_are_dead_lettered_and_delay_nothing(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(scaled(20000), seed=21))
    total = checked.workload.count
    poison = scaled(200)
    consumer, _ = await start_pipeline(procs, amqp)
    assert consumer is not None
    publisher = checked.publish("--envelope-size", "10")

    channel = await amqp.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(deployment.exchange)
    for i in range(poison):
        # Spread over the stream: each poison message goes out once the publisher got that far.
        await eventually(lambda i=i: checked.confirmed_lines() >= i * total // poison, 120, 0.005)
        await exchange.publish(aio_pika.Message(POISON[i % len(POISON)]), routing_key="demo.orders")
    await channel.close()

    assert publisher.wait(budget(300)) == 0, publisher.output()
    await checked.settle(amqp)

    async def all_dead_lettered() -> bool:
        return await queue_depth(amqp, deployment.dead_letter_queue) == poison

    await eventually(all_dead_lettered, 30, message="every poison message dead-lettered")
    await checked.check(amqp, "poison mixed in", f"{poison} poison messages", invalid=poison)
    # Delay nothing: no batch was ever retried or held back because of them.
    assert "store unavailable" not in consumer.output()
    assert consumer.terminate() == 0
    assert "unsettled=0" in consumer.output()


@BOTH_BACKENDS
async def test_sigterm_mid_stream_commits_acks_and_exits_fast_and_the_restart_continues(
    procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(scaled(20000), seed=77))
    total = checked.workload.count
    env = {"BATCH_SIZE": "20"}
    consumer, _ = await start_pipeline(procs, amqp, consumer_env=env)
    assert consumer is not None
    publisher = checked.publish("--envelope-size", "1")

    for stop_at in (total // 10, total // 3, total // 2):
        await past(deployment, stop_at)
        started = time.monotonic()
        assert consumer.terminate(timeout=10) == 0
        stopped_in = time.monotonic() - started
        assert stopped_in < 5, f"took {stopped_in:.1f}s to stop"
        assert still_streaming(checked), "the stream ended before the stop; proves nothing"
        summary = [line for line in consumer.output().splitlines() if "consumer stopped" in line]
        assert len(summary) == 1
        assert "unsettled=0" in summary[0]
        consumer = procs.consumer(**env)

    assert publisher.wait(budget(300)) == 0, publisher.output()
    await checked.settle(amqp)
    await checked.check(amqp, "consumer SIGTERM", "3 SIGTERMs")
    # Everything a stopped consumer took was acked before it exited, so nothing came back as a
    # redelivery: received is exactly what was published, duplicates exactly the re-sent events.
    c = counters(deployment)
    assert (c["received"], c["duplicate_dropped"]) == (total, total - checked.workload.unique)


async def test_sigterm_while_the_broker_is_down_still_stops_the_consumer_promptly(
    broker: Broker, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    if not broker.killable:
        pytest.skip("the broker from AMQP_URL cannot be killed by the tests")
    deployment = procs.deployment
    consumer, _ = await start_pipeline(procs, amqp, consumer_env={"RECONNECT_INTERVAL": "0.5"})
    assert consumer is not None
    for queue in (deployment.queue, deployment.dead_letter_queue):
        broker.wait_for_quorum_queue_registration(queue)
    broker.kill()
    try:
        started = time.monotonic()
        assert consumer.terminate(timeout=20) == 0
        assert time.monotonic() - started < 12
        assert "consumer stopped" in consumer.output()
    finally:
        broker.start()


def test_fault_injection_settings_are_checked(procs: Processes) -> None:
    consumer = procs.consumer(EVENTAGG_FAULT_COMMIT="melt:/tmp/x")
    assert consumer.wait(30) == 2
    assert "EVENTAGG_FAULT_COMMIT must be KIND:PATH" in consumer.output()
