"""settle() on real aiormq channels: rejects reach the dead-letter queue before any multiple-ack covers them,
and the settlements of a channel that died are dropped, never sent on the channel that replaced it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage

from consumer.handler import _ChannelSettlement, decode_batch, settle
from contract.event import Limits
from contract.topology import Declared, Topology, declare
from tests.harness.broker import Broker
from tests.harness.probes import queue_depth
from tests.harness.waiting import eventually

INVALID = b"{not json"


def event(event_id: str) -> bytes:
    return json.dumps(
        {"topic": "t", "event_id": event_id, "timestamp": "2026-01-01T00:00:00Z", "source": "s"}
    ).encode()


@pytest.fixture
async def connection(broker: Broker) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(broker.url)
    async with connection:
        yield connection


@pytest.fixture
async def declared(connection: AbstractConnection) -> AsyncIterator[Declared]:
    name = f"settle-{uuid.uuid4().hex[:10]}"
    topology = Topology.named(f"{name}.events", f"{name}.aggregator")
    channel = await connection.channel()
    found = await declare(channel, topology)
    yield found
    for queue in (topology.queue, topology.dead_letter_queue):
        await channel.queue_delete(queue)
    for exchange in (topology.exchange, topology.dead_letter_exchange):
        await channel.exchange_delete(exchange)
    await channel.close()


async def publish(declared: Declared, bodies: list[bytes]) -> None:
    for body in bodies:
        await declared.exchange.publish(aio_pika.Message(body, delivery_mode=2), "t")


async def deliveries(channel: AbstractChannel, queue: str, count: int) -> list[DeliveredMessage]:
    """`count` deliveries, unacked, on the aiormq channel under `channel`, in queue order."""
    underlay = await channel.get_underlay_channel()
    got: list[DeliveredMessage] = []
    while len(got) < count:
        message = await underlay.basic_get(queue, no_ack=False)
        if message.delivery_tag is not None:  # GetEmpty: published, not routed into the queue yet
            got.append(message)
    return got


async def depth_reaches(connection: AbstractConnection, queue: str, depth: int) -> None:
    """The queue holds exactly `depth` ready messages within 10 s: the quorum queue takes a closed channel's
    unacked deliveries back a moment after the client's close returned."""

    async def reached() -> bool:
        return await queue_depth(connection, queue) == depth

    await eventually(reached, 10, message=f"{queue} at depth {depth}")


async def dead_letters(connection: AbstractConnection, declared: Declared, count: int) -> list[bytes]:
    async def arrived() -> bool:
        return await queue_depth(connection, declared.dead_letter_queue.name) == count

    await eventually(arrived, 10, message=f"{count} dead letters")
    channel = await connection.channel()
    got = [m.body for m in await deliveries(channel, declared.dead_letter_queue.name, count)]
    await channel.close()
    return got


async def test_rejects_land_in_the_dead_letter_queue_even_when_a_later_multiple_ack_covers_their_tags(
    connection: AbstractConnection, declared: Declared
) -> None:
    await publish(declared, [event("a"), INVALID, event("c"), event("d"), b"[1]", event("f")])
    channel = await connection.channel()
    held = await deliveries(channel, declared.queue.name, 6)
    limits = Limits()

    # Batch one ends with an invalid delivery its own multiple-ack (tag 1) does not cover, but the
    # next batch's does (tag 6); inside batch two an invalid delivery sits between two valid ones.
    assert await settle(decode_batch(held[:2], limits)) == 0
    assert await settle(decode_batch(held[2:], limits)) == 0
    await channel.close()

    assert sorted(await dead_letters(connection, declared, 2)) == sorted([INVALID, b"[1]"])
    assert await queue_depth(connection, declared.queue.name) == 0


async def test_settlements_of_a_closed_channel_are_dropped_and_never_sent_on_its_replacement(
    connection: AbstractConnection, declared: Declared
) -> None:
    await publish(declared, [event("a"), INVALID, event("c")])
    first = await connection.channel()
    old = await deliveries(first, declared.queue.name, 3)
    await first.close()  # the broker takes the three back
    second = await connection.channel()
    again = await deliveries(second, declared.queue.name, 3)
    assert [m.delivery_tag for m in again] == [m.delivery_tag for m in old] == [1, 2, 3]
    assert all(m.redelivered for m in again)

    lost = await settle(decode_batch(old, Limits()))

    assert lost == 3
    await second.close()  # had the old tags been sent on it, it would have settled the redeliveries
    await depth_reaches(connection, declared.queue.name, 3)
    assert await queue_depth(connection, declared.dead_letter_queue.name) == 0


class _ClosingChannel:
    """An aiormq channel closing while an ack waits for its write: aiormq then fails the wait with a bare
    Exception (its reject_all with no reason), and the channel reads as closed."""

    is_closed = False

    async def basic_reject(self, tag: int, requeue: bool) -> None:
        return None

    async def basic_ack(self, tag: int, multiple: bool) -> None:
        self.is_closed = True
        raise Exception


async def test_a_channel_closing_while_an_ack_drains_counts_as_closed_and_stops_nothing() -> None:
    channel = _ClosingChannel()
    settlement = _ChannelSettlement(channel)  # type: ignore[arg-type]
    settlement.acks, settlement.last_ack = 3, 7

    assert await settlement.send() == 3  # left to the broker's redelivery, as for any closed channel

    open_channel = _ClosingChannel()
    open_channel.basic_ack = _raise_on_open  # type: ignore[method-assign]
    settlement = _ChannelSettlement(open_channel)  # type: ignore[arg-type]
    settlement.acks, settlement.last_ack = 1, 1
    with pytest.raises(ValueError, match="not a closed channel"):
        await settlement.send()


async def _raise_on_open(tag: int, multiple: bool) -> None:
    raise ValueError("not a closed channel")
