"""Broker topology: exchange, quorum queue and dead-letter names and arguments; `declare(channel)`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

log = logging.getLogger(__name__)

# Quorum queues count every return of a message (consumer crash, channel close, nack with requeue) as a
# delivery attempt, and RabbitMQ 4 applies a default limit of 20 when none is set. A limit that a crash loop
# could reach would dead-letter valid events, so we pin one explicitly and make it unreachable in practice:
# each consumer crash returns a message at most once, so a valid event would need a million crashes while it
# is in hand. Invalid messages do not depend on it: the consumer rejects them on first sight. A store failure
# does not count either, because the consumer keeps the failed batch in hand and retries it instead of
# requeueing it.
DELIVERY_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: str = "events"
    queue: str = "events.aggregator"
    dead_letter_exchange: str = "events.dlx"
    dead_letter_queue: str = "events.dead"
    binding_key: str = "#"
    delivery_limit: int = DELIVERY_LIMIT

    @classmethod
    def named(cls, exchange: str, queue: str) -> Topology:
        """Names for an exchange and queue; dead-letter names follow the pattern of the defaults."""
        return cls(
            exchange=exchange,
            queue=queue,
            dead_letter_exchange=f"{exchange}.dlx",
            dead_letter_queue=f"{exchange}.dead",
        )

    def queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": self.delivery_limit,
        }


@dataclass(frozen=True, slots=True)
class Declared:
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_queue: AbstractQueue


async def declare_exchange(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    return await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare(channel: AbstractChannel, topology: Topology) -> Declared:
    """Declare everything idempotently; safe to run from every deployable at every start."""
    exchange = await declare_exchange(channel, topology)
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await channel.declare_queue(
        topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(dlx, routing_key="#")
    queue = await channel.declare_queue(topology.queue, durable=True, arguments=topology.queue_arguments())
    await queue.bind(exchange, routing_key=topology.binding_key)
    log.info(
        "topology declared exchange=%s queue=%s dead_letter_queue=%s",
        topology.exchange,
        topology.queue,
        topology.dead_letter_queue,
    )
    return Declared(exchange=exchange, queue=queue, dead_letter_queue=dead)


async def queue_depth(channel: AbstractChannel, queue: str) -> tuple[int, int]:
    """Exact (ready messages, consumers) by passive declare; the management API lags for quorum queues.

    A passive declare of a missing queue closes the channel, so give it one you can lose.
    """
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return int(result.message_count or 0), int(result.consumer_count or 0)
