"""The consumer's policy: decode each delivery; after the commit, reject the invalid and ack the valid."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from contract.event import Event, InvalidEvent, Limits, decode

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Decoded:
    message: AbstractIncomingMessage
    events: list[Event] | None  # None: invalid, will be dead-lettered
    reason: str = ""


def decode_batch(messages: list[AbstractIncomingMessage], limits: Limits) -> list[Decoded]:
    decoded = []
    for message in messages:
        try:
            decoded.append(Decoded(message, decode(message.body, limits)))
        except InvalidEvent as exc:
            decoded.append(Decoded(message, None, str(exc)))
    return decoded


async def settle(batch: list[Decoded]) -> int:
    """Reject the invalid deliveries, then ack the valid ones with one multiple-ack per channel.

    Only call this after the batch's transaction committed. Returns how many deliveries could not be
    settled because their channel had closed; the broker redelivers those and dedup absorbs them.
    """
    channels: dict[int, _ChannelSettlement] = {}
    for item in batch:
        key = id(_underlay(item.message))
        settlement = channels.setdefault(key, _ChannelSettlement(item.message))
        if item.events is None:
            settlement.rejects.append(item)
        else:
            settlement.acks += 1
            settlement.last_ack = max(settlement.last_ack, _tag(item.message))
    lost = 0
    for settlement in channels.values():
        lost += await settlement.send()
    return lost


# The header POST /publish?wait=stored sets on each message (api/stored.py); the store records its commit.
RECEIPT_HEADER = "x-receipt"


def receipt_of(message: AbstractIncomingMessage) -> str | None:
    value = (message.headers or {}).get(RECEIPT_HEADER)
    if isinstance(value, bytes):  # AMQP long strings arrive as bytes
        value = value.decode(errors="replace")
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def _tag(message: AbstractIncomingMessage) -> int:
    if message.delivery_tag is None:
        raise RuntimeError("a delivery without a delivery tag cannot be acknowledged")
    return message.delivery_tag


def _underlay(message: AbstractIncomingMessage) -> object:
    # IncomingMessage.channel raises once the channel closed; the identity of the underlying aiormq channel
    # is what tells deliveries of a channel that died (tags meaningless now) from those of its replacement.
    try:
        return message.channel
    except aiormq.exceptions.ChannelInvalidStateError:
        return None


@dataclass(slots=True)
class _ChannelSettlement:
    first: AbstractIncomingMessage
    rejects: list[Decoded] = field(default_factory=list)
    acks: int = 0
    last_ack: int = 0

    async def send(self) -> int:
        count = len(self.rejects) + self.acks
        try:
            channel = self.first.channel
            # Rejects go first: a multiple ack also acks every earlier unsettled delivery on the channel,
            # and would take the invalid ones with it, keeping them out of the dead-letter queue.
            for item in self.rejects:
                log.warning(
                    "rejecting invalid message to the dead-letter queue message_id=%s reason=%s",
                    item.message.message_id,
                    item.reason,
                )
                await channel.basic_reject(_tag(item.message), requeue=False)
            if self.last_ack:
                await channel.basic_ack(self.last_ack, multiple=True)
        except (
            aiormq.exceptions.ChannelInvalidStateError,
            aiormq.exceptions.AMQPError,
            ConnectionError,
        ) as exc:
            log.warning(
                "channel closed before settling deliveries=%d error=%s; the broker will redeliver them",
                count,
                type(exc).__name__,
            )
            return count
        return 0
