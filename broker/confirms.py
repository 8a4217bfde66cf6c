"""One confirm-mode channel's side of publishing: the delivery-tag -> message map that settles the broker's
acks, nacks and returns, and the per-caller tally of what was confirmed or failed.

Nothing here creates a task, future or timer per message (see broker/publisher.py for why and for what
drives it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Sequence

import aiormq
from aiormq.abc import ChannelFrame, ConfirmationFrameType
from pamqp import commands as spec

from broker.wire import PublishFrames
from contract import event as wire
from contract.event import AnyEvent

log = logging.getLogger(__name__)

# Called with the events of each message once the broker confirmed it (once per confirmed message).
OnConfirmed = Callable[[list[AnyEvent]], None]


class PublishFailed(Exception):
    """Some events were not confirmed by the broker after every attempt; they may or may not have arrived."""

    def __init__(self, unconfirmed: Sequence[AnyEvent], reason: str) -> None:
        self.unconfirmed = list(unconfirmed)
        self.reason = reason
        super().__init__(f"{len(self.unconfirmed)} event(s) not confirmed by the broker: {reason}")


class Unroutable(PublishFailed):
    """The broker returned the message: nothing is bound to the exchange for it (topology missing)."""


class Tally:
    """One caller's messages: how many are unsettled, what was confirmed, what failed and why."""

    __slots__ = (
        "_waiter",
        "callback_error",
        "cancelled",
        "confirmed",
        "failed",
        "on_confirmed",
        "pending",
        "reasons",
        "unroutable",
        "written",
    )

    def __init__(self, on_confirmed: OnConfirmed | None = None) -> None:
        self.on_confirmed = on_confirmed
        self.pending = 0
        self.confirmed = 0
        self.written = 0  # events handed to the connection's writer at least once
        self.failed: list[AnyEvent] = []
        self.reasons: set[str] = set()
        self.unroutable = 0  # failed events that the broker returned
        self.cancelled = False  # the waiter gave up: what is still queued is not sent
        self.callback_error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def confirm(self, message: Message) -> None:
        self.confirmed += len(message.events)
        if self.on_confirmed is not None:
            try:
                self.on_confirmed(message.events)
            except Exception as exc:  # raised to the waiter; the channel's reader must not die of it
                if self.callback_error is None:
                    self.callback_error = exc
        self._settled()

    def fail(self, message: Message, reason: str, returned: bool = False) -> None:
        if not self.failed and not self.cancelled:
            log.error("giving up on events=%d reason=%s", len(message.events), reason)
        self.failed.extend(message.events)
        self.reasons.add(reason)
        if returned:
            self.unroutable += len(message.events)
        self._settled()

    def _settled(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until every message settled; PublishFailed (Unroutable if all were returned) names what failed."""
        if self.pending:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                # A caller's deadline: stop sending what is still queued; what was not confirmed is the
                # caller's to re-send.
                self.cancelled = True
                raise
        if self.callback_error is not None:
            raise self.callback_error
        if self.failed:
            error = Unroutable if self.unroutable == len(self.failed) else PublishFailed
            raise error(self.failed, "; ".join(sorted(self.reasons)))


# The message id of an envelope (a lone event's is its id): 32 hex digits, as a uuid4's, of which the first 20
# are random once per process and the last 12 count its messages. Unique without a uuid4 per message (a
# tenth of the CLI's time with single-event messages, where it was made and never used).
_ENVELOPE_ID_PREFIX = uuid.uuid4().hex[:20]
_envelope_numbers = itertools.count()


def envelope_id() -> str:
    return f"{_ENVELOPE_ID_PREFIX}{next(_envelope_numbers) & 0xFFFFFFFFFFFF:012x}"


class Message:
    """One AMQP message on its way: the events it carries, its body and its caller's tally."""

    __slots__ = ("attempts", "body", "due", "events", "message_id", "returned", "routing_key", "tally")

    def __init__(self, events: list[AnyEvent], tally: Tally) -> None:
        self.events = events
        self.tally = tally
        self.body = wire.encode(events)
        self.routing_key = events[0].topic
        self.message_id = wire.message_id(events, "") or envelope_id()
        self.attempts = 0
        self.returned = False
        self.due = 0.0


class Lane:
    """One confirm-mode channel: delivery tag -> message for what it has not settled yet.

    Tags are consecutive from 1 on a channel, so settling a `multiple` confirm walks the tags from the lowest
    unsettled one up to the confirmed one. `sink` is told of every settlement (the publisher).
    """

    def __init__(self, sink: Settler, number: int, exchange: str, frame_max: int) -> None:
        self.sink = sink
        self.number = number
        self.unsettled: dict[int, Message] = {}
        self.tag = 0  # the last delivery tag used
        self.low = 1  # no tag below it is unsettled
        self.nacks = 0
        self.acked = 0
        self.alive = True
        self.progress_at = 0.0  # loop time of the last confirm, or of the first send after an idle spell
        self._publish = PublishFrames(number, exchange, frame_max)
        self.stamp = self._publish.stamp
        self.channel: aiormq.Channel | None = None
        # The connection's write queue when the lane writes its own frames (broker/hooks.py's take_confirms);
        # None on the plain path, where each message goes through aiormq's basic_publish.
        self.writes: asyncio.Queue[ChannelFrame] | None = None
        self.returning = False  # the channel's reader is taking in a basic.return and its content

    def track(self, message: Message) -> int:
        """The next delivery tag, which now maps to `message`."""
        self.tag += 1
        self.unsettled[self.tag] = message
        message.attempts += 1
        if message.attempts == 1:
            message.tally.written += len(message.events)
        return self.tag

    def frames(self, message: Message) -> bytes:
        """The frames of `message` under the next delivery tag, which now maps to it."""
        self.tag += 1
        self.unsettled[self.tag] = message
        message.attempts += 1
        if message.attempts == 1:
            message.tally.written += len(message.events)
        return self._publish.frames(message.routing_key, message.message_id, message.body)

    def settle(self, tag: int, multiple: bool, ack: bool) -> None:
        """A broker confirm: ack or nack of `tag`, or of every unsettled tag up to it when `multiple`."""
        if not self.alive:
            return
        self.progress_at = asyncio.get_running_loop().time()
        pop, sink = self.unsettled.pop, self.sink
        if multiple:
            for each in range(self.low, tag + 1):
                message = pop(each, None)
                if message is not None:
                    sink.settled(self, message, ack)
            self.low = max(self.low, tag + 1)
        else:
            message = pop(tag, None)
            if message is not None:
                sink.settled(self, message, ack)
            while self.low <= self.tag and self.low not in self.unsettled:
                self.low += 1
        if not ack:
            self.nacks += 1
        sink.after_confirm(self)

    def returned(self, message_id: str | None, body: bytes) -> None:
        """basic.return (mandatory, no route): marks the oldest unsettled message with that id and body.

        The broker sends the return before the ack of the same message, so it is still unsettled here.
        """
        for message in self.unsettled.values():
            if not message.returned and message.message_id == message_id and message.body == body:
                message.returned = True
                return
        log.warning("the broker returned a message this channel has no record of message_id=%s", message_id)

    def take_unsettled(self) -> list[Message]:
        """Everything unsettled, oldest first; the lane settles nothing after this."""
        self.alive = False
        messages = [self.unsettled[tag] for tag in sorted(self.unsettled)]
        self.unsettled.clear()
        return messages

    def confirmed(self, frame: ConfirmationFrameType) -> None:
        # RabbitMQ confirms with Basic.Ack or Basic.Nack, both with `multiple`.
        tag = frame.delivery_tag or 0
        self.settle(tag, bool(getattr(frame, "multiple", False)), isinstance(frame, spec.Basic.Ack))


class Settler:
    """What a lane tells about its messages (the publisher implements it)."""

    def settled(self, lane: Lane, message: Message, ack: bool) -> None:
        raise NotImplementedError

    def after_confirm(self, lane: Lane) -> None:
        raise NotImplementedError
