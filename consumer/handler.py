"""The consumer's policy: decode each delivery; after the commit, reject the invalid and ack the valid."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiormq.abc import AbstractChannel, DeliveredMessage

from broker.connection import BROKER_ERRORS
from contract.event import RECEIPT_HEADER, Event, InvalidEvent, Limits, decode
from store import Message, Rejected

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Decoded:
    message: DeliveredMessage
    events: list[Event] | None  # None: invalid, will be dead-lettered
    reason: str = ""
    kind: str = ""

    def for_store(self) -> Message:
        """The events, or the rejected message itself: the store keeps it as a dead letter in the same
        transaction that counts it invalid, unless it is a redelivery of one it kept already."""
        if self.events is not None:
            return self.events
        message = self.message
        return Rejected(
            self.reason,
            self.kind,
            message.routing_key or "",
            message.body,
            redelivered=bool(message.redelivered),
            message_id=message.header.properties.message_id,
        )


def decode_batch(messages: list[DeliveredMessage], limits: Limits) -> list[Decoded]:
    decoded = []
    for message in messages:
        try:
            decoded.append(Decoded(message, decode(message.body, limits)))
        except InvalidEvent as exc:
            decoded.append(Decoded(message, None, str(exc), exc.kind))
    return decoded


async def settle(batch: list[Decoded]) -> int:
    """Reject the invalid deliveries, then ack the valid ones with one multiple-ack per channel.

    Only call this after the batch's transaction committed, and for batches in the order they arrived: the
    multiple-ack covers every earlier delivery of its channel. Returns how many deliveries could not be
    settled because their channel had closed; the broker redelivers those and dedup absorbs them.
    """
    # Keyed by the aiormq channel that delivered each message, never by channel number: a delivery tag
    # means something only on its own channel, and a reconnect opens a new channel object (maybe with the
    # same number) whose tags start again at 1. Settling an old tag there would ack someone else's message.
    channels: dict[AbstractChannel, _ChannelSettlement] = {}
    for item in batch:
        message = item.message
        settlement = channels.get(message.channel)
        if settlement is None:
            settlement = channels[message.channel] = _ChannelSettlement(message.channel)
        if item.events is None:
            settlement.rejects.append(item)
        else:
            settlement.acks += 1
            settlement.last_ack = max(settlement.last_ack, _tag(message))
    lost = 0
    for settlement in channels.values():
        lost += await settlement.send()
    return lost


def receipt_of(message: DeliveredMessage) -> str | None:
    value = (message.header.properties.headers or {}).get(RECEIPT_HEADER)
    if isinstance(value, bytes):  # AMQP long strings arrive as bytes
        value = value.decode(errors="replace")
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def _tag(message: DeliveredMessage) -> int:
    tag = message.delivery_tag
    if tag is None:
        raise ValueError("a delivery without a delivery tag cannot be acknowledged")
    return tag


@dataclass(slots=True)
class _ChannelSettlement:
    channel: AbstractChannel
    rejects: list[Decoded] = field(default_factory=list)
    acks: int = 0
    last_ack: int = 0

    async def send(self) -> int:
        count = len(self.rejects) + self.acks
        try:
            # Rejects go first: a multiple ack also acks every earlier unsettled delivery on the channel,
            # and would take the invalid ones with it, keeping them out of the dead-letter queue.
            for item in self.rejects:
                log.warning(
                    "rejecting invalid message to the dead-letter queue message_id=%s reason=%s",
                    item.message.header.properties.message_id,
                    item.reason,
                )
                await self.channel.basic_reject(_tag(item.message), requeue=False)
            if self.last_ack:
                await self.channel.basic_ack(self.last_ack, multiple=True)
        except Exception as exc:
            # aiormq refuses a closed channel, or the write fails (BROKER_ERRORS); and a channel that closes
            # while an ack waits for its write fails that wait with a bare Exception (aiormq's reject_all).
            if not isinstance(exc, BROKER_ERRORS) and not self.channel.is_closed:
                raise
            log.warning(
                "channel closed before settling deliveries=%d error=%s; the broker will redeliver them",
                count,
                type(exc).__name__,
            )
            return count
        return 0
