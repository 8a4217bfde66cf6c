"""Broker topology: exchange, quorum queue and dead-letter names and arguments; `declare(channel)`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
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

# Replicas of each quorum queue: every node, up to three. Left unset, RabbitMQ places a member on every node
# of the cluster, so on five or seven nodes each publish waits for fsyncs on a majority of five or seven and
# replication traffic grows with them, while three members already survive the loss of any one node (and
# keep the queue available while one is restarted), the failure this product is built to ride out. RabbitMQ
# takes the smaller of this and the cluster's size, so a single node or a pair gets all of its nodes.
# It only applies when a queue is created: a node added later gets no member (`rabbitmq-queues grow`).
QUORUM_REPLICAS = 3
GROUP_SIZE = "x-quorum-initial-group-size"
# RabbitMQ (3.10 at least) refuses a redeclare whose group size differs from the queue's, including a queue
# declared without one, i.e. by a version of this product from before it was chosen; the refusal names the
# current value, which is then the one to declare with.
_INEQUIVALENT_GROUP_SIZE = re.compile(
    rf"inequivalent arg '{GROUP_SIZE}'.* but current is (?:none|the value '(\d+)'|'(\d+)')"
)


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

    replicas: int = QUORUM_REPLICAS

    def queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            GROUP_SIZE: self.replicas,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": self.delivery_limit,
        }

    def dead_letter_queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum", GROUP_SIZE: self.replicas}


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
    dead_arguments = topology.dead_letter_queue_arguments()
    dead = await _declare_quorum_queue(channel, topology.dead_letter_queue, dead_arguments)
    await dead.bind(dlx, routing_key="#")
    queue = await _declare_quorum_queue(channel, topology.queue, topology.queue_arguments())
    await queue.bind(exchange, routing_key=topology.binding_key)
    # DEBUG: every publisher run declares too, and an INFO line there is noise in front of its report.
    log.debug(
        "topology declared exchange=%s queue=%s dead_letter_queue=%s",
        topology.exchange,
        topology.queue,
        topology.dead_letter_queue,
    )
    return Declared(exchange=exchange, queue=queue, dead_letter_queue=dead)


async def _declare_quorum_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, Any]
) -> AbstractQueue:
    """Declare a quorum queue, keeping the replica count of one that exists already.

    A refused declare closes its channel, so the arguments are tried on a throwaway channel first; the robust
    channel then declares (and after a reconnect re-declares) the queue with the ones that were accepted.
    """
    underlay = await channel.get_underlay_channel()
    probe = await underlay.connection.channel()
    try:
        await probe.queue_declare(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        found = _INEQUIVALENT_GROUP_SIZE.search(str(exc))
        if found is None:
            raise
        current = found.group(1) or found.group(2)
        arguments = {key: value for key, value in arguments.items() if key != GROUP_SIZE}
        if current is not None:
            arguments[GROUP_SIZE] = int(current)
        log.warning(
            "queue=%s exists with %s; keeping it (its members change with rabbitmq-queues, not a declare)",
            name,
            f"{GROUP_SIZE}={current}" if current else f"no {GROUP_SIZE}",
        )
    else:
        await probe.close()
    return await channel.declare_queue(name, durable=True, arguments=arguments)


async def queue_depth(channel: AbstractChannel, queue: str) -> tuple[int, int]:
    """Exact (ready messages, consumers) by passive declare; the management API lags for quorum queues.

    A passive declare of a missing queue closes the channel, so give it one you can lose.
    """
    declared = await channel.declare_queue(queue, passive=True)
    result = declared.declaration_result
    return int(result.message_count or 0), int(result.consumer_count or 0)
