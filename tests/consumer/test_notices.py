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


async def test_a_notice_carries_the_figures_of_its_commits_up_to_the_cap_and_names_every_receipt(
    broker: Broker, amqp: AbstractRobustConnection
) -> None:
    name = f"notices-{uuid.uuid4().hex[:8]}"
    topology = Topology.named(name, f"{name}.q")
    notices = CommitNotices([broker.url], topology, reconnect_interval=0.1)
    channel = await amqp.channel()
    received: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        notices.start()
        await eventually(lambda: notices._underlay is not None, 30, message="the notices channel up")
        exchange = await channel.get_exchange(commits.exchange_name(topology))
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await received.put(message.body)

        await queue.consume(take, no_ack=True)
        notices.committed(["r1", "r2"], 1, [("r1", 1, 0), ("r2", 0, 1)])
        first = commits.decode(await asyncio.wait_for(received.get(), 10))
        assert first == commits.Notice(("r1", "r2"), 1, {"r1": (1, 0), "r2": (0, 1)})

        # Two commits while no notice is on its way go out in one, with more figures than a notice carries:
        # every receipt is named, the figures stop at the cap (those requests read the store), and a receipt
        # without figures (one an earlier commit stored: a redelivered message) is named without any.
        cap = commits.FIGURES_PER_NOTICE
        many = [f"m{i}" for i in range(cap + 10)]
        notices.committed(["again", *many[:5]], 5, [(r, 1, 0) for r in many[:5]])
        notices.committed(many[5:], cap + 5, [(r, 0, 1) for r in many[5:]])
        both = commits.decode(await asyncio.wait_for(received.get(), 10))

        assert both is not None
        assert (both.receipts, both.stored) == (("again", *many), cap + 10)
        assert both.figures == {r: (1, 0) if i < 5 else (0, 1) for i, r in enumerate(many[:cap])}
        assert received.empty()
    finally:
        await notices.close()
        await channel.exchange_delete(commits.exchange_name(topology))
        await channel.close()
