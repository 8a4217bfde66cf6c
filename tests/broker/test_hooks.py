"""Canaries: each private hook of broker/hooks.py is active on a real connection to a real broker.

An upgrade that renames or reshapes what a hook touches switches its fast path off without changing any
outcome, so the outcome tests elsewhere stay green; these fail instead. `make test-upgrade` runs them on the
newest versions pyproject.toml's ranges allow. Each also shows, on the plain path (contract/versions.py's
EVENTAGG_ASSUME_VERSIONS naming an unverified version), that what it measures does change: it can fail.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import aiormq.connection
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage

from broker import hooks, wire
from broker.confirms import Lane
from broker.connection import FailoverConnection, PlainFailoverConnection, connect
from broker.publisher import ConfirmingPublisher, PublishOptions
from broker.subscription import Subscription
from contract import versions
from contract.event import Event
from contract.topology import Topology, declare
from tests.harness.broker import Broker
from tests.harness.waiting import eventually

COUNT = 300
UNVERIFIED = ",".join(f"{library.distribution}={library.below}" for library in hooks.LIBRARIES)


@pytest.fixture(params=["hooked", "plain"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The verified versions in use (hooks on), or an unverified version of each library (the plain path)."""
    if request.param == "plain":
        monkeypatch.setenv(versions.ASSUME_ENV, UNVERIFIED)
    else:
        monkeypatch.delenv(versions.ASSUME_ENV, raising=False)
    versions.forget()
    yield request.param
    monkeypatch.delenv(versions.ASSUME_ENV, raising=False)
    versions.forget()
    hooks.install_frame_reader()  # the installed versions decide again for the tests that follow


@pytest.fixture
async def topology(broker: Broker) -> AsyncIterator[Topology]:
    name = f"hooks{secrets.token_hex(5)}"
    made = Topology.named(f"{name}.events", f"{name}.aggregator")
    yield made
    conn = await aio_pika.connect(broker.url)
    async with conn:
        channel = await conn.channel()
        for queue in (made.queue, made.dead_letter_queue):
            await channel.queue_delete(queue)
        for exchange in (made.exchange, made.dead_letter_exchange):
            await channel.exchange_delete(exchange)


def running_in() -> str:
    """The qualified name of the coroutine the current task runs: whose loop turn this is."""
    task = asyncio.current_task()
    assert task is not None
    return str(getattr(task.get_coro(), "__qualname__", "?"))


def events(count: int) -> list[Event]:
    return [
        Event(
            topic=f"hooks.t{index % 3}",
            event_id=f"e{index}",
            timestamp="2026-12-07T00:00:00Z",
            source="canary",
            payload={"n": index},
        )
        for index in range(count)
    ]


async def publish_and_consume(
    broker: Broker, topology: Topology, on_settle: Any = None
) -> tuple[list[tuple[str, str]], type[Any]]:
    """COUNT single-event messages through the product's publisher and subscription, each on a connection
    made by broker.connection.connect; the (event id, task) of every delivery, and the connection's class."""
    delivered: list[tuple[str, str]] = []

    def deliver(message: DeliveredMessage) -> None:
        delivered.append((str(message.header.properties.message_id), running_in()))

    publishing = await connect([broker.url], name="canary-publisher", attempts=1)
    consuming = await connect([broker.url], name="canary-consumer", attempts=1)
    assert publishing is not None and consuming is not None
    try:
        options = PublishOptions(envelope_size=1, linger=0)
        async with ConfirmingPublisher.open(publishing, topology, options) as publisher:
            await publisher.publish(events(COUNT))
        channel = await consuming.channel()
        await declare(channel, topology)
        subscription = Subscription(channel, topology.queue, deliver)
        await subscription.start()
        await eventually(lambda: len(delivered) == COUNT, 30, message=f"{COUNT} delivered")
        await subscription.cancel()
        await channel.close()
    finally:
        await publishing.close()
        await consuming.close()
    return delivered, type(consuming)


async def test_the_frame_reader_decodes_a_real_connections_frames(
    broker: Broker, topology: Topology, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_pamqp: Counter[str] = Counter()
    unmarshal = pamqp.frame.unmarshal

    def spy(data: bytes) -> Any:
        decoded = unmarshal(data)
        by_pamqp[type(decoded[2]).__name__] += 1
        return decoded

    monkeypatch.setattr(pamqp.frame, "unmarshal", spy)
    delivered, _ = await publish_and_consume(broker, topology)

    assert sorted(event_id for event_id, _ in delivered) == sorted(f"e{i}" for i in range(COUNT))
    per_message = {"Deliver", "ContentHeader", "ContentBody", "Ack"}
    if path == "hooked":
        assert aiormq.connection.FrameReceiver is wire.FrameReader
        # The connection's handshake and the topology's replies go to pamqp; no frame of a message does.
        assert not per_message & set(by_pamqp), by_pamqp
    else:
        assert aiormq.connection.FrameReceiver is not wire.FrameReader
        assert {name: by_pamqp[name] for name in ("Deliver", "ContentHeader", "ContentBody")} == {
            "Deliver": COUNT,
            "ContentHeader": COUNT,
            "ContentBody": COUNT,
        }


async def test_deliveries_reach_the_inbox_in_the_channel_reader_without_a_task(
    broker: Broker, topology: Topology, path: str
) -> None:
    delivered, _ = await publish_and_consume(broker, topology)

    tasks = Counter(task for _, task in delivered)
    if path == "hooked":
        # aiormq's channel reader hands each delivery over itself: no task of aiormq's per delivery.
        assert tasks == {"Channel._reader": COUNT}
    else:
        # aiormq's own dispatch: a task per delivery, running the subscription's callback.
        assert tasks == {"Subscription._on_delivery": COUNT}


async def test_confirms_settle_in_the_connection_reader(
    broker: Broker, topology: Topology, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled_in: Counter[str] = Counter()
    settle = Lane.settle

    def spy(lane: Lane, tag: int, multiple: bool, ack: bool) -> None:
        settled_in[running_in()] += 1
        settle(lane, tag, multiple, ack)

    monkeypatch.setattr(Lane, "settle", spy)
    delivered, _ = await publish_and_consume(broker, topology)

    assert len(delivered) == COUNT
    if path == "hooked":
        # Settled by aiormq's connection reader as the confirm arrives: not by the channel's reader task, and
        # not by a future per message. Multiple acks settle ranges, so there are at most as many as messages.
        assert set(settled_in) == {"Connection.__reader"}, settled_in
        assert 0 < settled_in["Connection.__reader"] <= COUNT
    else:
        # One basic_publish per message, each settled by its own confirmation in its own task.
        assert settled_in == {"ConfirmingPublisher._publish_plain": COUNT}


async def test_a_connection_sees_its_connect_through_aio_pikas_own_method(
    broker: Broker, topology: Topology, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FailoverConnection.before_restore is only ever called by the override of RobustConnection._on_connected
    # (broker/hooks.py): if aio-pika stopped calling that method, the fail-over's pause would be skipped.
    restores: list[str] = []
    before = FailoverConnection.before_restore

    async def spy(connection: FailoverConnection) -> None:
        restores.append(connection.name)
        await before(connection)

    monkeypatch.setattr(FailoverConnection, "before_restore", spy)
    _, connection_class = await publish_and_consume(broker, topology)

    if path == "hooked":
        assert connection_class is FailoverConnection
        assert sorted(restores) == ["canary-consumer", "canary-publisher"]
    else:
        assert connection_class is PlainFailoverConnection
        assert restores == []


def test_the_plain_path_is_announced_once_per_library_naming_the_version(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="contract.versions")
    monkeypatch.setenv(versions.ASSUME_ENV, "aiormq=7.3.0")
    versions.forget()
    try:
        assert [hooks.install_frame_reader() for _ in range(3)] == [False, False, False]
        assert hooks.aiormq_hooks() is False and hooks.aio_pika_hooks() is True
        lines = [record.getMessage() for record in caplog.records if record.name == "contract.versions"]
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            "aiormq 7.3.0 is not a version the fast paths were verified on (>=7.2.4,<7.3)"
        )
    finally:
        monkeypatch.delenv(versions.ASSUME_ENV)
        versions.forget()
        assert hooks.install_frame_reader() is True
