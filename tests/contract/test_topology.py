"""contract/topology.py on a real broker: the replica count is explicit and declare stays idempotent."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractConnection

from contract.topology import GROUP_SIZE, QUORUM_REPLICAS, Topology, declare
from tests.harness.broker import Broker


@pytest.fixture
async def connection(broker: Broker) -> AsyncIterator[AbstractConnection]:
    async with await aio_pika.connect(broker.url) as connected:
        yield connected


@pytest.fixture
async def topology(connection: AbstractConnection) -> AsyncIterator[Topology]:
    name = f"test-topology-{secrets.token_hex(4)}"
    named = Topology.named(f"{name}.events", f"{name}.aggregator")
    yield named
    channel = await connection.channel()
    for queue in (named.queue, named.dead_letter_queue):
        await channel.queue_delete(queue)
    for exchange in (named.exchange, named.dead_letter_exchange):
        await channel.exchange_delete(exchange)


async def accepts(connection: AbstractConnection, queue: str, arguments: dict[str, Any]) -> bool:
    """Whether a redeclare with these arguments is accepted, i.e. they are the queue's own."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


def without_group_size(arguments: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in arguments.items() if key != GROUP_SIZE}


async def test_a_new_queue_is_declared_with_an_explicit_replica_count_and_redeclares_quietly(
    connection: AbstractConnection, topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    channel = await connection.channel()
    await declare(channel, topology)
    await declare(channel, topology)
    assert topology.queue_arguments()[GROUP_SIZE] == QUORUM_REPLICAS == 3
    assert await accepts(connection, topology.queue, topology.queue_arguments())
    assert not await accepts(connection, topology.queue, without_group_size(topology.queue_arguments()))
    assert await accepts(connection, topology.dead_letter_queue, topology.dead_letter_queue_arguments())
    assert "exists with" not in caplog.text
    assert not channel.is_closed


@pytest.mark.parametrize("existing", [None, 5])
async def test_declare_keeps_a_queue_that_exists_with_another_replica_count_or_none(
    connection: AbstractConnection,
    topology: Topology,
    caplog: pytest.LogCaptureFixture,
    existing: int | None,
) -> None:
    # As a version of the product from before the count was chosen (None), or an operator (5), declared it.
    before = [without_group_size(topology.queue_arguments()), {"x-queue-type": "quorum"}]
    if existing is not None:
        before = [{**arguments, GROUP_SIZE: existing} for arguments in before]
    setup = await connection.channel()
    for queue, arguments in zip((topology.queue, topology.dead_letter_queue), before, strict=True):
        await setup.declare_queue(queue, durable=True, arguments=arguments)
    caplog.set_level(logging.WARNING, logger="contract.topology")

    channel = await connection.channel(publisher_confirms=True)
    declared = await declare(channel, topology)

    assert not channel.is_closed
    shown = f"{GROUP_SIZE}={existing}" if existing else f"no {GROUP_SIZE}"
    assert caplog.text.count(f"exists with {shown}; keeping it") == 2
    for queue, arguments in zip((topology.queue, topology.dead_letter_queue), before, strict=True):
        assert await accepts(connection, queue, arguments)
    # The channel and the queue it declared work: a message goes through.
    await declared.exchange.publish(aio_pika.Message(b"{}"), routing_key="any.topic")
    message = await declared.queue.get(timeout=10)
    await message.ack()
    assert message.body == b"{}"
