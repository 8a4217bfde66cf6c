"""The consumer's commit notices (consumer/notices.py) on a real broker."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import AMQPConnectionError

from consumer.notices import CommitNotices
from contract import commits
from contract.topology import Topology
from tests.harness.broker import Broker
from tests.harness.waiting import eventually


async def test_a_connection_lost_while_the_notices_channel_opens_is_tried_again_and_notices_flow(
    broker: Broker, amqp: AbstractRobustConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"notices-{uuid.uuid4().hex[:8]}"
    topology = Topology.named(name, f"{name}.q")
    notices = CommitNotices([broker.url], topology, reconnect_interval=0.1)
    real_open = notices._open
    failures: list[AbstractRobustConnection] = []

    async def open_failing_once(connection: AbstractRobustConnection) -> None:
        if not failures:
            failures.append(connection)
            raise AMQPConnectionError("the node went away while the channel opened")
        await real_open(connection)

    monkeypatch.setattr(notices, "_open", open_failing_once)
    channel = await amqp.channel()
    received: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        notices.start()
        await eventually(lambda: notices._underlay is not None, 30, message="the notices channel up")
        assert failures and failures[0].is_closed, "the connection whose channel failed was not closed"
        exchange = await channel.get_exchange(commits.exchange_name(topology))
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await received.put(message.body)

        await queue.consume(take, no_ack=True)
        notices.committed(["r1", "r2"], 7)
        body = await asyncio.wait_for(received.get(), 10)
        assert commits.decode(body) == commits.Notice(("r1", "r2"), 7)
    finally:
        await notices.close()
        await channel.exchange_delete(commits.exchange_name(topology))
        await channel.close()
