"""One confirm-mode channel's side of publishing: the frames of a publish, the delivery-tag -> message map
that settles the broker's acks, nacks and returns, and the per-caller tally of what was confirmed or failed.

Nothing here creates a task, future or timer per message (see broker/publisher.py for why and for what
drives it).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
from aiormq.abc import ConfirmationFrameType
from pamqp import commands as spec
from pamqp.header import ContentHeader

from contract import event as wire
from contract.event import Event

log = logging.getLogger(__name__)

# Called with the events of each message once the broker confirmed it (once per confirmed message).
OnConfirmed = Callable[[list[Event]], None]

# Routing keys whose publish frame a channel keeps ready; past it the cache starts over.
METHOD_CACHE_SIZE = 10_000


class PublishFailed(Exception):
    """Some events were not confirmed by the broker after every attempt; they may or may not have arrived."""

    def __init__(self, unconfirmed: Sequence[Event], reason: str) -> None:
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
        self.failed: list[Event] = []
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


class Message:
    """One AMQP message on its way: the events it carries, its body and its caller's tally."""

    __slots__ = ("attempts", "body", "due", "events", "message_id", "returned", "routing_key", "tally")

    def __init__(self, events: list[Event], tally: Tally) -> None:
        self.events = events
        self.tally = tally
        self.body = wire.encode(events)
        self.routing_key = events[0].topic
        # A single event's message id is its event id, for the consumer's logs.
        self.message_id = events[0].event_id if len(events) == 1 else uuid.uuid4().hex
        self.attempts = 0
        self.returned = False
        self.due = 0.0


# The frames of a publish, built here rather than by pamqp's generic marshalling: pamqp took 17 us per
# message (Basic.Publish, header with properties, body) against 2 us for these struct packs, which give the
# same bytes (tests/contract/test_publishing.py compares them).
_FRAME = struct.Struct(">BHI")
_HEADER = struct.Struct(">BHIHHQH")
_PUBLISH = struct.Struct(">HHH").pack(60, 40, 0)  # class basic, method publish, reserved
# content_type, delivery_mode, message_id and timestamp set; persistent (delivery mode 2), JSON. The
# timestamp (whole seconds, the AMQP property's unit) is the consumer's publish-to-commit lag metric.
_PROPERTY_FLAGS = 0x8000 | 0x1000 | 0x0080 | 0x0040
_PROPERTIES = b"\x10application/json\x02"
_TIMESTAMP = struct.Struct(">Q")
_FRAME_END = b"\xce"


def _short(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"{text[:40]!r}... is longer than an AMQP short string (255 bytes)")
    return bytes((len(raw),)) + raw


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
        self._exchange = _short(exchange)
        self._body_max = frame_max - 8
        self._methods: dict[str, bytes] = {}
        self._timestamp = b""
        self.stamp(time.time())
        self.channel: aiormq.Channel | None = None
        self.returning = False  # the channel's reader is taking in a basic.return and its content

    def stamp(self, now: float) -> None:
        """The AMQP timestamp of the messages framed from now on: set once per write, not per message."""
        self._timestamp = _TIMESTAMP.pack(int(now))

    def frames(self, message: Message) -> bytes:
        """The frames of `message` under the next delivery tag, which now maps to it."""
        self.tag += 1
        self.unsettled[self.tag] = message
        message.attempts += 1
        if message.attempts == 1:
            message.tally.written += len(message.events)
        method = self._methods.get(message.routing_key)
        if method is None:
            if len(self._methods) >= METHOD_CACHE_SIZE:
                self._methods.clear()
            payload = _PUBLISH + self._exchange + _short(message.routing_key) + b"\x01"  # mandatory
            method = _FRAME.pack(1, self.number, len(payload)) + payload + _FRAME_END
            self._methods[message.routing_key] = method
        body = message.body
        properties = _PROPERTIES + _short(message.message_id) + self._timestamp
        header = _HEADER.pack(2, self.number, 14 + len(properties), 60, 0, len(body), _PROPERTY_FLAGS)
        if len(body) <= self._body_max:
            content = _FRAME.pack(3, self.number, len(body)) + body + _FRAME_END
        else:
            content = b"".join(
                _FRAME.pack(3, self.number, len(chunk)) + chunk + _FRAME_END
                for chunk in (body[i : i + self._body_max] for i in range(0, len(body), self._body_max))
            )
        return method + header + properties + _FRAME_END + content

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

    async def on_confirm_frame(self, frame: ConfirmationFrameType) -> None:
        self.confirmed(frame)

    async def on_return_frame(self, frame: spec.Basic.Return) -> None:
        channel = self.channel
        if channel is None:
            return
        self.returning = True
        try:
            # The content follows on the channel's frame queue, as aiormq's own return handler reads it.
            header = await channel._get_frame()
            if not isinstance(header, ContentHeader):
                raise aiormq.exceptions.InvalidFrameError(header)
            delivered = await channel._read_content(frame, header)
            self.returned(delivered.header.properties.message_id, delivered.body)
        finally:
            self.returning = False

    def attach(self, channel: aiormq.Channel) -> None:
        """Take the channel's confirm and return frames: this lane keeps its own tag -> message map, so they
        come here rather than to aiormq, which would look for a future per message."""
        self.channel = channel
        channel._on_confirm_frame = self.on_confirm_frame  # type: ignore[method-assign]
        channel._on_return_frame = self.on_return_frame  # type: ignore[method-assign]
        channel.frames = _ConfirmsInline(channel.frames, self)  # type: ignore[assignment]


class _ConfirmsInline:
    """Stands in for an aiormq channel's frame queue, which aiormq's connection reader fills and the channel's
    reader task empties: a confirm with nothing queued before it is settled by the connection reader itself.

    aiormq hands every frame of a channel to that channel's reader task, so a confirm cost a task switch
    before it settled and another before the waiting request ran: measured with time stamps in the api on
    `python -m bench --only pika_roundtrip,shim_sequential`, 16 us of the 30 us from the confirm's arrival to
    the request resuming. Frames keep their order: a confirm behind queued frames, or while a return's
    content is still being read (the broker sends a return before the confirm of its message), is queued.
    """

    __slots__ = ("_lane", "_queue")

    def __init__(self, queue: asyncio.Queue[tuple[int, Any]], lane: Lane) -> None:
        self._queue = queue
        self._lane = lane

    async def put(self, item: tuple[int, Any]) -> None:
        frame, lane, queue = item[1], self._lane, self._queue
        if type(frame) in _CONFIRMS and queue.empty() and not lane.returning and lane.alive:
            try:
                lane.confirmed(frame)
            except Exception as exc:
                # Raised in the channel's reader it would have closed the channel; here it must not end the
                # connection's reader. The publisher re-sends what the closed channel held.
                log.exception("settling a confirm failed; closing the channel channel=%d", lane.number)
                if lane.channel is not None:
                    closing = asyncio.get_running_loop().create_task(lane.channel.close(exc))
                    _CLOSING.add(closing)
                    closing.add_done_callback(_CLOSING.discard)
            return
        await queue.put(item)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


_CONFIRMS = (spec.Basic.Ack, spec.Basic.Nack)
_CLOSING: set[asyncio.Task[Any]] = set()


class Settler:
    """What a lane tells about its messages (the publisher implements it)."""

    def settled(self, lane: Lane, message: Message, ack: bool) -> None:
        raise NotImplementedError

    def after_confirm(self, lane: Lane) -> None:
        raise NotImplementedError
