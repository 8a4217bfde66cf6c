"""Tests of tests/harness/broker.py: the broker it finds is usable and, when private, survives kill -9
intact."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Iterator

import aio_pika
import pytest

from tests.harness.broker import Broker, BrokerError, PrivateNode, find_broker


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # Not conftest's session broker: these tests kill theirs, which must not disturb other modules.
    found = find_broker(tmp_path_factory.mktemp("broker"))
    try:
        yield found
    finally:
        found.stop()


def unique_queue_name(purpose: str) -> str:
    return f"test-broker-{purpose}-{secrets.token_hex(4)}"


async def test_broker_url_accepts_guest_and_round_trips_a_message_through_a_quorum_queue(
    own_broker: Broker,
) -> None:
    name = unique_queue_name("round-trip")
    async with await aio_pika.connect(own_broker.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(b"hello", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name
            )
            message = await queue.get(timeout=10)
            await message.ack()
            assert message.body == b"hello"
        finally:
            await queue.delete(if_unused=False, if_empty=False)


async def test_private_node_keeps_persistent_messages_across_kill_9(own_broker: Broker) -> None:
    if not own_broker.killable:
        pytest.skip(f"{own_broker.description} cannot be killed by the tests")
    name = unique_queue_name("kill-9")
    bodies = [f"event-{i}-{secrets.token_hex(8)}".encode() for i in range(3)]

    async with await aio_pika.connect(own_broker.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        # RabbitMQ 3.10 would lose a quorum queue this young to kill -9; see PrivateNode.start().
        await asyncio.to_thread(own_broker.wait_for_quorum_queue_registration, name)
        for body in bodies:
            # With publisher confirms on, publish() returns only once the broker has the message on disk.
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name
            )

    await asyncio.to_thread(own_broker.kill)
    if isinstance(own_broker, PrivateNode):
        # A dead VM refuses the connection; a half-killed one (only its wrapper script gone) would accept.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", own_broker.port), timeout=2).close()
    await asyncio.to_thread(own_broker.start)

    async with await aio_pika.connect(own_broker.url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        try:
            assert queue.declaration_result.message_count == len(bodies)
            received = []
            for _ in bodies:
                message = await queue.get(timeout=10)
                await message.ack()
                received.append(message.body)
            assert received == bodies
            assert await queue.get(fail=False, timeout=10) is None
        finally:
            await queue.delete(if_unused=False, if_empty=False)


def test_a_broker_the_tests_do_not_own_refuses_to_be_killed_or_restarted() -> None:
    external = Broker("amqp://guest:guest@127.0.0.1:5672/", "the AMQP_URL broker")
    assert not external.killable
    with pytest.raises(BrokerError, match="cannot kill the AMQP_URL broker"):
        external.kill()
    with pytest.raises(BrokerError, match="cannot kill the AMQP_URL broker"):
        external.restart()
    external.stop()  # a no-op: stopping someone else's broker must not fail teardown
