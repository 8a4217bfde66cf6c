"""Fail-over on a real 3-node RabbitMQ cluster: kill -9 the node a client uses, the queue's leader, two nodes.

Every deployable gets all three URLs. Each scenario streams a known workload, kills nodes while it runs,
restarts them, and ends with the crash checker (`python -m publisher --check`): nothing confirmed lost,
nothing unexpected, exact counters, nothing dead-lettered. What each fail-over cost (time from the kill to
the client's next connection, events the publisher re-sent, deliveries beyond the workload) goes into the
checker's table at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from broker import connection as broker_link
from contract import event as wire
from contract import status as status_file
from contract.event import Event
from tests.harness.broker import RABBITMQ_SERVER
from tests.harness.cluster import Cluster, ClusterNode
from tests.harness.crash import Checked, Workload
from tests.harness.pipeline import counters, past
from tests.harness.probes import consumer_count
from tests.harness.processes import Deployment, Process, Processes, api_get
from tests.harness.waiting import eventually

pytestmark = pytest.mark.cluster

FAST = {"RECONNECT_INTERVAL": "0.5"}
# A line of the log, whatever else the format puts in it: its time, and the port of the node connected to.
CONNECTED = re.compile(
    r"^.*?(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+).*connected to the broker node=\S+@127\.0\.0\.1:(\d+)/\S*"
    # The process's own connection: the consumer's commit notices have one of their own (-notices).
    r" connection=eventagg-[a-z]+(?![\w-])",
    re.M,
)
# broker/publisher.py's lines for messages sent again (nacked, or in flight on a channel that was lost).
RESENT = re.compile(r"re-sending(?: nacked| on a new channel) messages=(\d+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not RABBITMQ_SERVER.exists():
        reason = f"the cluster tests need the rabbitmq-server package ({RABBITMQ_SERVER})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    started = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture
def deployment(cluster: Cluster, tmp_path: Path) -> Deployment:
    # A scenario that failed half-way may have left a node down; every scenario starts with all three.
    for node in cluster.nodes:
        if not node.running:
            node.start()
    name = f"c{uuid.uuid4().hex[:10]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    return Deployment(
        amqp_url=cluster.amqp_url,
        exchange=f"{name}.events",
        queue=f"{name}.aggregator",
        db_path=tmp_path / "store" / "events.db",
        logs=logs,
    )


@pytest.fixture
async def amqp(cluster: Cluster) -> AsyncIterator[AbstractRobustConnection]:
    """The tests' own probe connection: it fails over like the deployables do."""
    connection = await broker_link.connect(cluster.urls, name="tests", reconnect_interval=0.2, attempts=3)
    assert connection is not None
    async with connection:
        yield connection


def connections(process: Process) -> list[tuple[float, int]]:
    """(epoch time, node port) of every connection the process made, from its log."""
    return [
        (datetime.fromisoformat(stamp.replace(",", ".")).timestamp(), int(port))
        for stamp, port in CONNECTED.findall(process.output())
    ]


async def current_node(cluster: Cluster, process: Process) -> ClusterNode:
    made = await eventually(lambda: connections(process), 30, message=f"{process.module} connected")
    return cluster.node_at(made[-1][1])


async def failed_over(cluster: Cluster, process: Process, killed: ClusterNode, at: float) -> float:
    """Seconds from the kill until the process connected to another node; the process must have been on
    the killed node when it died, and the node it moved to must be one that still runs."""
    # Log stamps have millisecond resolution; 10 ms of slack keeps a connection at the kill's own instant.
    before = [port for when, port in connections(process) if when < at - 0.01]
    assert before and before[-1] == killed.port, (
        f"{process.module} was on port {before[-1] if before else None}, not on the killed node "
        f"{killed.port}, when it was killed"
    )

    def moved() -> tuple[float, int] | None:
        later = [(when, port) for when, port in connections(process) if when >= at - 0.01]
        return later[-1] if later and later[-1][1] != killed.port else None

    when, port = await eventually(moved, 60, 0.05, message=f"{process.module} connected to another node")
    assert not killed.running
    assert cluster.node_at(port).running, f"{process.module} moved to port {port}, which is not running"
    return float(when) - at


async def extra_deliveries(deployment: Deployment, sent: int) -> int:
    """Events the consumer received beyond those sent once: redeliveries, and re-sends that arrived twice."""
    received = await eventually(
        lambda: (n := counters(deployment)["received"]) >= sent and n, 30, message=f"{sent} received"
    )
    return int(received) - sent


def resent(process: Process) -> int:
    return sum(int(n) for n in RESENT.findall(process.output()))


async def kill(node: ClusterNode) -> float:
    at = time.time()
    await asyncio.to_thread(node.kill)
    return at


async def restart_and_rejoin(cluster: Cluster, node: ClusterNode, *queues: str) -> None:
    """Start a killed node on its data dir; it rejoins, and each queue has all three members online."""
    await asyncio.to_thread(node.start)
    everyone = frozenset(n.node_name for n in cluster.nodes)
    for queue in queues:
        await eventually(
            lambda q=queue: asyncio.to_thread(lambda: cluster.queue_status(q).online == everyone),
            60,
            0.5,
            message=f"{queue} back to 3 online members",
        )


async def start_on(
    cluster: Cluster, procs: Processes, module: str, wanted: Callable[[ClusterNode], bool], **env: str
) -> tuple[Process, ClusterNode]:
    """Start the api or the consumer until its random first choice of node is one the scenario needs."""
    for _ in range(12):
        process = procs.start(module, **env)
        node = await current_node(cluster, process)
        if wanted(node):
            return process, node
        process.terminate()
    raise AssertionError(f"twelve {module}s in a row chose a node the scenario cannot use")


async def pipeline(
    cluster: Cluster,
    procs: Processes,
    amqp: AbstractRobustConnection,
    *,
    consumer_on_leader: bool | None = None,
    **consumer_env: str,
) -> tuple[Process, Process, ClusterNode]:
    """The api, the consumer, and the node that leads the queue: the api's, because the api declares the
    topology first and a new quorum queue's leader is the node it was declared on (RabbitMQ's default
    client-local locator). The consumer is started until it is on the leader's node (True), on another one
    (False), or wherever it chose (None)."""
    deployment = procs.deployment
    api = procs.api(**FAST, PUBLISH_TIMEOUT="2")
    await eventually(
        lambda: api_get(deployment, "/health").json()["broker"]["status"] == "connected", 60, message="api up"
    )
    leader = await current_node(cluster, api)
    for queue in (deployment.queue, deployment.dead_letter_queue):
        # RabbitMQ 3.10 loses a quorum queue this young to kill -9 (tests/harness/broker.py,
        # PrivateNode.start).
        await asyncio.to_thread(cluster.wait_for_quorum_queue_registration, queue)

    def wanted(node: ClusterNode) -> bool:
        return consumer_on_leader is None or (node is leader) == consumer_on_leader

    consumer, _ = await start_on(cluster, procs, "consumer", wanted, **FAST, **consumer_env)
    await eventually(lambda: consumer_count(amqp, deployment.queue), 30, message="consumer attached")
    assert (await asyncio.to_thread(cluster.leader, deployment.queue)) is leader
    return api, consumer, leader


async def test_killing_the_consumers_node_mid_stream_fails_over_and_loses_nothing(
    cluster: Cluster, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(20000, seed=1201))
    # The leader elsewhere: this scenario is about the consumer's connection, the next one about the leader.
    _, consumer, _ = await pipeline(cluster, procs, amqp, consumer_on_leader=False, BATCH_SIZE="50")
    queues = (deployment.queue, deployment.dead_letter_queue)
    publisher = checked.publish("--envelope-size", "10", MAX_ATTEMPTS="30")
    await past(deployment, checked.workload.count // 6)

    victim = await current_node(cluster, consumer)
    at = await kill(victim)
    assert publisher.alive, "the publisher finished before the kill; proves nothing"
    took = await failed_over(cluster, consumer, victim, at)
    rejoined = asyncio.create_task(restart_and_rejoin(cluster, victim, *queues))

    assert await asyncio.to_thread(publisher.wait, 300) == 0, publisher.output()
    await checked.settle(amqp, 180)
    extra = await extra_deliveries(deployment, checked.workload.count)
    await rejoined
    # Clients keep working with the node back: the same workload again is stored once more, i.e. not at all.
    again = checked.publish("--envelope-size", "100")
    assert again.wait(120) == 0, again.output()
    await checked.settle(amqp, 60)
    await checked.check(
        amqp,
        "cluster: consumer's node kill -9",
        f"fail-over {took:.2f}s, {resent(publisher)} messages re-sent, extra deliveries {extra}",
    )


async def test_killing_the_quorum_queue_leader_mid_stream_loses_nothing(
    cluster: Cluster, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(20000, seed=1202))
    # The consumer elsewhere: it keeps its connection and its channel, and the queue moves under it.
    _, consumer, leader = await pipeline(cluster, procs, amqp, consumer_on_leader=False, BATCH_SIZE="50")
    queues = (deployment.queue, deployment.dead_letter_queue)
    publisher = checked.publish("--envelope-size", "10", MAX_ATTEMPTS="30")
    await past(deployment, checked.workload.count // 6)

    at = await kill(leader)
    assert publisher.alive, "the publisher finished before the kill; proves nothing"
    seen = await eventually(
        lambda: cluster.elected_after(deployment.queue, at), 30, 0.05, message="a new leader elected"
    )
    elected = float(seen) - at
    # The queue's record names the new leader a moment after the election is logged; until then no
    # running node lists the queue at all (its record still points at the dead leader).
    moved = await eventually(
        lambda: asyncio.to_thread(cluster.leader, deployment.queue), 30, 0.2, message="the queue listed again"
    )
    assert moved is not leader and moved.running
    rejoined = asyncio.create_task(restart_and_rejoin(cluster, leader, *queues))

    assert await asyncio.to_thread(publisher.wait, 300) == 0, publisher.output()
    await checked.settle(amqp, 180)
    extra = await extra_deliveries(deployment, checked.workload.count)
    await rejoined
    assert len(connections(consumer)) == 1, "the consumer's node was not killed; it kept its connection"
    await checked.check(
        amqp,
        "cluster: quorum leader kill -9",
        f"new leader {elected:.2f}s after the kill, {resent(publisher)} messages re-sent, "
        f"extra deliveries {extra}",
    )


async def post_all(
    client: httpx.AsyncClient,
    requests: list[list[Event]],
    answers: dict[int, int],
    concurrency: int,
    spans: dict[int, tuple[float, float]],
    started: dict[int, float] | None = None,
) -> None:
    """POST every request (a few at once), recording each one's status and (sent, answered) wall-clock
    times (and in `started`, each one's sending time as it is sent); the api publishes with confirms."""
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with slots:
            sent = time.time()
            if started is not None:
                started[index] = sent
            response = await client.post(
                "/publish", content=wire.encode(requests[index]), headers={"content-type": "application/json"}
            )
            spans[index] = (sent, time.time())
            answers[index] = response.status_code

    await asyncio.gather(*(one(i) for i in range(len(requests))))


async def test_killing_the_apis_node_during_http_publishes_gives_200_or_503_and_a_re_send_stores_once(
    cluster: Cluster, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(6000, seed=1203, duplicates=0.0))
    events = checked.workload.events
    requests = [events[i : i + 50] for i in range(0, len(events), 50)]
    # The node the api loses also leads the queue: its new channel meets a new leader.
    api, _, victim = await pipeline(cluster, procs, amqp)

    answers: dict[int, int] = {}
    spans: dict[int, tuple[float, float]] = {}
    async with httpx.AsyncClient(base_url=deployment.api_url, timeout=30) as client:
        started: dict[int, float] = {}
        stream = asyncio.create_task(post_all(client, requests, answers, 4, spans, started))
        await eventually(lambda: len(answers) >= len(requests) // 5, 60, 0.01, message="a fifth answered")
        # The node stops answering first (SIGSTOP), and dies once a request sent after that is waiting on
        # it: the kill lands on a publish the broker has not confirmed, whatever the machine's speed (on a
        # quiet one, the requests in flight at a bare kill had often had their confirms already).
        frozen_at = time.time()
        for pid in victim.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        await eventually(
            lambda: any(t > frozen_at for i, t in started.items() if i not in answers),
            30,
            0.005,
            message="a publish waiting on the stopped node",
        )
        at = await kill(victim)
        answered_before = len(answers)
        took = await failed_over(cluster, api, victim, at)
        rejoined = asyncio.create_task(
            restart_and_rejoin(cluster, victim, deployment.queue, deployment.dead_letter_queue)
        )
        await stream
        assert answered_before < len(requests), "the stream ended before the kill; proves nothing"
        assert set(answers.values()) <= {200, 503}, answers
        # The kill landed on publishes in flight: requests sent before it and answered after it.
        in_flight = sorted(i for i, (sent, answered) in spans.items() if sent < at < answered)
        assert in_flight, "no request was in flight when the node died; proves nothing"
        first_answers = dict(answers)
        for index, status in first_answers.items():
            if status == 200:
                checked.record_confirmed(requests[index])
        # The client's re-send of every 503, as the api tells it to.
        retry = {i: requests[i] for i, status in first_answers.items() if status == 503}
        for batch in retry.values():
            response = await client.post(
                "/publish", content=wire.encode(batch), headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text
            checked.record_confirmed(batch)
    # Something in flight was sent again: by the client after a 503, or by the api itself on its new
    # channel before it answered 200. Either way the check below proves the re-send stored once.
    resent_by_api = resent(api)
    assert retry or resent_by_api, (
        f"requests {in_flight} were in flight at the kill, yet nothing was re-sent; proves no re-send"
    )

    await checked.settle(amqp, 120)
    extra = await extra_deliveries(deployment, checked.workload.count)
    await rejoined
    await checked.check(
        amqp,
        "cluster: api's node kill -9",
        f"fail-over {took:.2f}s, {len(in_flight)} requests in flight at the kill, {len(retry)} of "
        f"{len(requests)} 503 and re-sent by the client, {resent_by_api} messages re-sent by the api, "
        f"extra deliveries {extra}",
    )


async def test_two_of_three_nodes_killed_publishes_fail_fast_and_everything_resumes_when_one_returns(
    cluster: Cluster, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    checked = Checked(procs, Workload(2000, seed=1204, duplicates=0.0))
    # The api's node, which leads the queue, and one other die.
    _, _, leader = await pipeline(cluster, procs, amqp)
    victims = [leader, next(node for node in cluster.nodes if node is not leader)]
    queues = (deployment.queue, deployment.dead_letter_queue)
    first = checked.publish("--envelope-size", "10")
    assert first.wait(120) == 0, first.output()
    await checked.settle(amqp, 60)

    # The queue keeps one member of three: no majority, so nothing can be confirmed.
    for node in victims:
        await kill(node)
    body = wire.encode(checked.workload.events[:50])
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=deployment.api_url, timeout=30) as client:
        began = time.monotonic()
        response = await client.post("/publish", content=body, headers=headers)
        answered_in = time.monotonic() - began
        assert response.status_code == 503, response.text
        assert answered_in < 10, f"503 after {answered_in:.1f}s"

        began = time.monotonic()
        cli = checked.publish("--envelope-size", "10", CONFIRM_TIMEOUT="1", MAX_ATTEMPTS="2")
        assert cli.wait(60) == 1, cli.output()
        exited_in = time.monotonic() - began
        assert "UNCONFIRMED" in cli.output() or "not confirmed" in cli.output(), cli.output()

        # A majority again: everything resumes; the clients re-send what was refused.
        await asyncio.to_thread(victims[0].start)
        retry = await client.post("/publish", content=body, headers=headers)
        assert retry.status_code == 200, retry.text
        again = checked.publish("--envelope-size", "10", MAX_ATTEMPTS="30")
        # The third node boots meanwhile (it takes far longer than the re-run, which it does not help).
        third = asyncio.create_task(restart_and_rejoin(cluster, victims[1], *queues))
        assert await asyncio.to_thread(again.wait, 120) == 0, again.output()

    await third
    await checked.settle(amqp, 120)
    await checked.check(
        amqp,
        "cluster: 2 of 3 nodes kill -9",
        f"503 in {answered_in:.1f}s, CLI exit 1 in {exited_in:.1f}s, resumed",
    )


async def test_a_channel_that_cannot_be_restored_is_reported_connecting_not_consuming_until_a_majority(
    cluster: Cluster, procs: Processes, amqp: AbstractRobustConnection
) -> None:
    deployment = procs.deployment
    # The consumer off the leader's node; both die, and the consumer can only reach the third node, where
    # the quorum queue has one member of three: its channel restore there gets no answer.
    api, consumer, leader = await pipeline(
        cluster, procs, amqp, consumer_on_leader=False, RESTORE_TIMEOUT="3"
    )
    consumers_node = await current_node(cluster, consumer)
    survivor = next(n for n in cluster.nodes if n is not leader and n is not consumers_node)
    await eventually(lambda: reported(deployment)[0] == "consuming", 30, message="consuming at first")

    for node in (consumers_node, leader):
        await kill(node)
    # Bounded: the restore on the survivor is given up after RESTORE_TIMEOUT, said once, and tried again.
    _, detail = await eventually(
        lambda: (r := reported(deployment))[0] == "connecting" and "was not restored" in (r[1] or "") and r,
        120,
        0.2,
        message="the consumer reporting a restore that does not finish",
    )
    assert f"on node=amqp://guest:***@127.0.0.1:{survivor.port}/" in detail, detail
    health = await eventually(
        lambda: (h := api_get(deployment, "/health").json())["consumer"]["status"] == "connecting" and h,
        60,
        0.2,
        message="/health saying the consumer is connecting",
    )
    assert health["status"] == "degraded", health
    assert "was not restored" in health["consumer"]["detail"], health
    check = procs.start("consumer.healthcheck")
    assert check.wait(30) == 1
    assert "consumer state is 'connecting'" in check.output()
    overdue = [line for line in consumer.output().splitlines() if "was not restored on node=" in line]
    assert len(overdue) == 1, overdue  # one WARNING for the outage, however many restores it took

    # A majority again: the restore finishes, the consumer says so, and it really consumes.
    await asyncio.to_thread(leader.start)
    await eventually(lambda: reported(deployment)[0] == "consuming", 120, 0.2, message="consuming again")
    assert "consuming again node=" in consumer.output()
    checked = Checked(procs, Workload(200, seed=1205, duplicates=0.0))
    publisher = checked.publish("--envelope-size", "10", MAX_ATTEMPTS="30")
    assert await asyncio.to_thread(publisher.wait, 120) == 0, publisher.output()
    await checked.settle(amqp, 120)
    assert counters(deployment)["unique_processed"] == 200
    await restart_and_rejoin(cluster, consumers_node, deployment.queue, deployment.dead_letter_queue)
    assert api.alive


def reported(deployment: Deployment) -> tuple[str | None, str | None]:
    """The consumer's own status file: its state and why."""
    found = status_file.read_or_none(deployment.db_path)
    return (None, None) if found is None else (found.state, found.detail)
