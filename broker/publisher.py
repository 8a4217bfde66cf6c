"""The confirming publisher: envelopes by topic, many messages in flight on one confirm-mode channel, confirms
settled by delivery tag, re-send of what was nacked or lost with its channel until confirmed or given up.

The per-message path has no task, future, timer or lock: a message is a small record that is queued, written
(many per socket write) under the next delivery tag of the current channel, and settled when the broker's
ack or nack covers its tag (a `multiple` one settles a range). What waits is a `Tally` per caller (a batch of
the CLI, a request of the api), woken once when its last message settled. One watchdog timer per publisher
notices a channel that stopped confirming; one task per publisher opens a new channel when the current one
is gone, and everything that was in flight on the old one is sent again there (at-least-once: the consumer
deduplicates).

Why below aio-pika's `Exchange.publish` here (measured with py-spy on `python -m publisher --envelope-size
1`, 20,000 events, 2 loaded cores): aio-pika's `Message`, the `basic_publish` coroutine with its lock, its
confirmation future and timeout, and a task per message took about 60 % of the process, and aiormq wrote each
message with its own socket write; the publisher reached 0.14x a pika `SelectConnection` publisher. aio-pika
still owns the connection (robust reconnects) and the topology; this module opens plain aiormq channels on
that connection and reads their confirm and return frames itself (broker/confirms.py), through the aiormq
hooks of broker/hooks.py. On an aiormq those hooks were not verified on, the plain path sends each message
with aiormq's public `basic_publish` in a task of its own and settles it by the confirmation that returns:
the same tags, tallies, re-sends and errors, at the per-message cost measured above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec

from broker import hooks
from broker.confirms import Lane, Message, OnConfirmed, PublishFailed, Settler, Tally, Unroutable
from broker.connection import BROKER_ERRORS
from broker.connection import connect as amqp_connect
from contract.config import parse_urls
from contract.event import AnyEvent
from contract.topology import Topology, declare

log = logging.getLogger(__name__)

# The errors and the callback type callers need come from broker/confirms.py; they are named here too.
__all__ = [
    "DEFAULT_LINGER",
    "ConfirmingPublisher",
    "EnvelopeBatch",
    "OnConfirmed",
    "PublishFailed",
    "PublishOptions",
    "Unroutable",
    "envelopes",
]

# Long enough to fill envelopes at a moderate rate, short enough for publish-to-queryable p99 < 100 ms at
# 1,000 events/s (50 ms gave 101 ms here); a fast stream fills its envelopes long before it expires.
DEFAULT_LINGER = 0.02

# A channel that nacked this many times is replaced rather than retried on: RabbitMQ 3.10 kept rejecting
# every publish on a channel opened within ~0.2 s of a quorum-queue leader's death, for the channel's life.
NACKS_PER_CHANNEL = 3
# The watchdog looks this many times per confirm timeout.
WATCHDOG_CHECKS = 4


@dataclass(frozen=True, slots=True)
class PublishOptions:
    envelope_size: int = 100
    linger: float = DEFAULT_LINGER
    max_in_flight: int = 256
    confirm_timeout: float = 5.0
    max_attempts: int = 5
    retry_backoff: float = 0.2
    # Envelopes of consecutive events of one topic only, sent in the order the events came: a replay of an
    # export stores them in the order they were stored, at the cost of smaller envelopes where topics mix.
    keep_order: bool = False

    def __post_init__(self) -> None:
        if self.envelope_size < 1:
            raise ValueError(f"envelope size must be at least 1, got {self.envelope_size}")
        if self.max_in_flight < 1 or self.max_attempts < 1:
            raise ValueError("max_in_flight and max_attempts must be at least 1")
        if self.linger < 0 or self.confirm_timeout <= 0 or self.retry_backoff < 0:
            raise ValueError("linger and retry_backoff must be >= 0 and confirm_timeout > 0")

    def backoff(self, attempt: int) -> float:
        """Seconds before re-sending after the attempt-th send was nacked; at most the confirm timeout."""
        return float(min(self.retry_backoff * 2 ** (attempt - 1), self.confirm_timeout))


class ConfirmingPublisher(Settler):
    """Publishes messages persistent and mandatory and settles them by the broker's confirms.

    Messages of every caller share one queue and one window of `max_in_flight` unconfirmed messages, so
    concurrent api requests pipeline on the same channel instead of taking turns.
    """

    def __init__(self, connection: AbstractConnection, exchange: str, options: PublishOptions) -> None:
        self._connection = connection
        self.exchange = exchange
        self.options = options
        self._queue: deque[Message] = deque()
        self._delayed: list[Message] = []
        self._delay_timer: asyncio.TimerHandle | None = None
        self._lane: Lane | None = None
        self._lane_wanted = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._flush_soon = False
        self._keeper: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._plain_sends: set[asyncio.Task[None]] = set()
        self._no_lane_since: float | None = None
        self._lanes_without_ack = 0
        self._closed = False
        self.channels_opened = 0
        self._topology_channel: AbstractChannel | None = None
        self.problem: str | None = None  # why the last channel went away, for logs and errors

    # ---- entry points ------------------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        topology: Topology,
        options: PublishOptions | None = None,
        *,
        connection_name: str = "eventagg-publisher",
        reconnect_interval: float = 2.0,
    ) -> AsyncIterator[ConfirmingPublisher]:
        # Each node of the URL list once, from a random one: a publisher that cannot reach any says so
        # instead of waiting; once connected it fails over between the nodes by itself, resuming
        # `reconnect_interval` after the loss (RECONNECT_INTERVAL, as for the consumer and the api).
        urls = parse_urls(url)
        connection = await amqp_connect(
            urls, name=connection_name, attempts=len(urls), reconnect_interval=reconnect_interval
        )
        if connection is None:
            raise RuntimeError("amqp.connect returned no connection without a stop event")
        async with connection, cls.open(connection, topology, options) as publisher:
            yield publisher

    @classmethod
    @asynccontextmanager
    async def open(
        cls, connection: AbstractConnection, topology: Topology, options: PublishOptions | None = None
    ) -> AsyncIterator[ConfirmingPublisher]:
        publisher = await cls.start(connection, topology, options)
        try:
            yield publisher
        finally:
            await publisher.close()

    @classmethod
    async def start(
        cls, connection: AbstractConnection, topology: Topology, options: PublishOptions | None = None
    ) -> ConfirmingPublisher:
        """Declare the topology, open the first channel; `close()` when done (or use `open`)."""
        # Declaring the whole topology here means events published before any consumer ran are queued,
        # not dropped as unroutable. The channel stays open so that a robust connection re-declares the
        # topology after a reconnect.
        channel = await connection.channel(publisher_confirms=False)
        try:
            await declare(channel, topology)
            publisher = cls(connection, topology.exchange, options or PublishOptions())
            publisher._topology_channel = channel
            publisher._lane = await publisher._open_lane()
        except BaseException:
            with suppress(*BROKER_ERRORS):
                await channel.close()
            raise
        publisher._keeper = asyncio.create_task(publisher._keep_lane(), name="publisher-channel")
        publisher._arm_watchdog()
        return publisher

    async def close(self) -> None:
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._keeper
        for timer in (self._watchdog, self._delay_timer):
            if timer is not None:
                timer.cancel()
        self._fail_waiting("the publisher was closed")
        lane, self._lane = self._lane, None
        if lane is not None:
            for message in lane.take_unsettled():
                message.tally.fail(message, "the publisher was closed")
            if lane.channel is not None:
                with suppress(*BROKER_ERRORS):
                    await asyncio.wait_for(lane.channel.close(), self.options.confirm_timeout)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._topology_channel is not None and not self._topology_channel.is_closed:
            with suppress(*BROKER_ERRORS):
                await asyncio.wait_for(self._topology_channel.close(), self.options.confirm_timeout)

    def batch(self, on_confirmed: OnConfirmed | None = None) -> EnvelopeBatch:
        return EnvelopeBatch(self, on_confirmed)

    async def publish(self, events: Sequence[AnyEvent]) -> None:
        """Publish all events in envelopes by topic, pipelined; raises PublishFailed naming what failed."""
        tally = Tally()
        self.submit([Message(group, tally) for group in envelopes(events, self.options.envelope_size)])
        await tally.wait()

    def submit(self, messages: Iterable[Message], *, soon: bool = False) -> None:
        """Queue messages for sending; with `soon`, write at the end of this loop turn (more per write)."""
        for message in messages:
            message.tally.pending += 1
            self._queue.append(message)
        if self._closed:
            self._fail_waiting("the publisher was closed")
        elif not soon:
            self._flush()
        elif not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def submit_one(self, message: Message) -> None:
        """`submit((message,), soon=True)`, for the stream of single-event messages the CLI sends."""
        message.tally.pending += 1
        self._queue.append(message)
        if self._closed:
            self._fail_waiting("the publisher was closed")
        elif not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    @property
    def in_flight(self) -> int:
        """Messages written on the current channel and not yet settled."""
        return 0 if self._lane is None else len(self._lane.unsettled)

    async def room(self) -> None:
        """Wait while a window's worth of messages is queued and not yet written (back-pressure)."""
        while len(self._queue) >= self.options.max_in_flight and not self._closed:
            self._room.clear()
            await self._room.wait()

    # ---- the hot path --------------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_soon = False
        lane, queue = self._lane, self._queue
        if lane is None or lane.channel is None or lane.channel.is_closed or not queue:
            return
        space = self.options.max_in_flight - len(lane.unsettled)
        if space <= 0:
            return
        writes = lane.writes
        if writes is None:
            self._send_plain(lane, space)
            return
        if writes.full():  # aiormq's writer is behind; try again in a moment, in order
            self._flush_soon = True
            asyncio.get_running_loop().call_later(0.001, self._flush)
            return
        if not lane.unsettled:
            lane.progress_at = asyncio.get_running_loop().time()
        parts = []
        lane.stamp(time.time())
        frames = lane.frames
        while space and queue:
            message = queue.popleft()
            if message.tally.cancelled:
                continue
            parts.append(frames(message))
            space -= 1
        if parts:
            # Many messages in one ChannelFrame: one queue item for aiormq's writer and one socket write.
            writes.put_nowait(ChannelFrame(payload=b"".join(parts), should_close=False))
        if len(queue) < self.options.max_in_flight:
            self._room.set()

    # ---- the plain path (an aiormq nobody verified the hooks on: broker/hooks.py) --------------------------

    def _send_plain(self, lane: Lane, space: int) -> None:
        """Each message through aiormq's public basic_publish, settled by the confirmation it returns."""
        if not lane.unsettled:
            lane.progress_at = asyncio.get_running_loop().time()
        queue = self._queue
        while space and queue:
            message = queue.popleft()
            if message.tally.cancelled:
                continue
            tag = lane.track(message)
            task = asyncio.get_running_loop().create_task(self._publish_plain(lane, message, tag))
            self._plain_sends.add(task)
            task.add_done_callback(self._plain_sends.discard)
            space -= 1
        if len(queue) < self.options.max_in_flight:
            self._room.set()

    async def _publish_plain(self, lane: Lane, message: Message, tag: int) -> None:
        channel = lane.channel
        if channel is None:
            return
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=message.message_id,
            timestamp=datetime.now(UTC),
        )
        try:
            confirmation = await channel.basic_publish(
                message.body,
                exchange=self.exchange,
                routing_key=message.routing_key,
                properties=properties,
                mandatory=True,
            )
        except aiormq.exceptions.PublishError:
            message.returned = True
            lane.settle(tag, False, True)
            return
        except aiormq.exceptions.DeliveryError:
            lane.settle(tag, False, False)
            return
        except BROKER_ERRORS:
            return  # the channel went away: its closing callback re-sends what it held
        if isinstance(confirmation, DeliveredMessage):  # returned, on a channel that does not raise for it
            message.returned = True
        lane.settle(tag, False, isinstance(confirmation, spec.Basic.Ack | DeliveredMessage))

    def settled(self, lane: Lane, message: Message, ack: bool) -> None:
        if ack:
            if message.returned:
                message.tally.fail(message, f"unroutable via exchange {self.exchange!r}", returned=True)
            else:
                lane.acked += 1
                message.tally.confirm(message)
        elif message.returned:
            message.tally.fail(message, f"unroutable via exchange {self.exchange!r}", returned=True)
        elif message.attempts >= self.options.max_attempts:
            message.tally.fail(message, f"nacked by the broker {message.attempts} time(s)")
        elif not message.tally.cancelled:
            message.due = asyncio.get_running_loop().time() + self.options.backoff(message.attempts)
            self._delayed.append(message)
            self._arm_delay()

    def after_confirm(self, lane: Lane) -> None:
        if lane.acked:
            self._lanes_without_ack = 0
        if lane.nacks >= NACKS_PER_CHANNEL and lane is self._lane:
            self._abandon(lane, f"the broker nacked {lane.nacks} times on this channel")
        else:
            self._flush()

    # ---- re-sending ----------------------------------------------------------------------------------------

    def _arm_delay(self) -> None:
        if self._delay_timer is None and self._delayed:
            first = min(message.due for message in self._delayed)
            self._delay_timer = asyncio.get_running_loop().call_at(first, self._release_delayed)

    def _release_delayed(self) -> None:
        self._delay_timer = None
        now = asyncio.get_running_loop().time()
        due = [message for message in self._delayed if message.due <= now]
        self._delayed = [message for message in self._delayed if message.due > now]
        if due:
            log.warning("re-sending nacked messages=%d", len(due))
            self._queue.extendleft(reversed(due))
            self._flush()
        self._arm_delay()

    def _requeue(self, messages: list[Message], reason: str) -> None:
        """Messages a channel took with it: sent again on the next one, unless out of attempts."""
        again = []
        for message in messages:
            if message.returned:
                message.tally.fail(message, f"unroutable via exchange {self.exchange!r}", returned=True)
            elif message.attempts >= self.options.max_attempts:
                message.tally.fail(message, f"{reason} (after {message.attempts} attempts)")
            elif not message.tally.cancelled:
                again.append(message)
        if again:
            log.warning(
                "channel lost with messages in flight, re-sending on a new channel messages=%d reason=%s",
                len(again),
                reason,
            )
            self._queue.extendleft(reversed(again))

    def _abandon(self, lane: Lane, reason: str) -> None:
        """Stop using a channel that nacks or stopped confirming; what it holds goes out on a new one."""
        self._lane_gone(lane, reason)
        if lane.channel is not None and not lane.channel.is_closed:
            task = asyncio.get_running_loop().create_task(self._close_quietly(lane.channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_quietly(self, channel: aiormq.Channel) -> None:
        with suppress(*BROKER_ERRORS):
            await asyncio.wait_for(channel.close(), self.options.confirm_timeout)

    def _lane_gone(self, lane: Lane, reason: str) -> None:
        if lane is not self._lane or self._closed:
            return
        self._lane = None
        self.problem = reason
        if not lane.acked:
            self._lanes_without_ack += 1
        self._no_lane_since = asyncio.get_running_loop().time()
        self._requeue(lane.take_unsettled(), reason)
        self._lane_wanted.set()

    def _on_channel_closed(self, lane: Lane, closing: asyncio.Future[Any]) -> None:
        exc = None if closing.cancelled() else closing.exception()
        self._lane_gone(lane, f"channel closed: {type(exc).__name__ if exc else 'closed'}: {exc or ''}")

    async def _open_lane(self) -> Lane:
        connection = self._connection
        if connection.is_closed:
            raise aiormq.exceptions.ConnectionClosed(320, "the connection was closed")
        # A robust connection sets `connected` again once it reconnected.
        await asyncio.wait_for(connection.connected.wait(), self.options.confirm_timeout)
        transport = connection.transport
        if transport is None:
            raise ConnectionError("no connection to the broker")
        raw = await transport.connection.channel(
            publisher_confirms=True, timeout=self.options.confirm_timeout
        )
        if not isinstance(raw, aiormq.Channel):
            raise TypeError(f"expected an aiormq channel, got {type(raw).__name__}")
        frame_max = transport.connection.connection_tune.frame_max or 131_072  # 0 means no limit
        lane = Lane(self, raw.number, self.exchange, frame_max)
        lane.channel = raw
        lane.writes = hooks.take_confirms(raw, lane)
        self.channels_opened += 1
        raw.closing.add_done_callback(lambda closing: self._on_channel_closed(lane, closing))
        return lane

    async def _keep_lane(self) -> None:
        """Open a new channel whenever the current one went away, with backoff while channels fail."""
        while True:
            await self._lane_wanted.wait()
            self._lane_wanted.clear()
            while self._lane is None:
                if self._lanes_without_ack:
                    await asyncio.sleep(self.options.backoff(self._lanes_without_ack))
                try:
                    lane = await self._open_lane()
                except BROKER_ERRORS as exc:
                    self.problem = f"{type(exc).__name__}: {exc}"
                    if self._connection.is_closed:
                        self._fail_waiting(f"the connection was closed ({self.problem})")
                        return
                    self._lanes_without_ack = max(1, self._lanes_without_ack)
                    continue
                self._lane, self._no_lane_since = lane, None
                log.info("publishing on a new channel channel=%d queued=%d", lane.number, len(self._queue))
                self._flush()

    def _arm_watchdog(self) -> None:
        interval = max(self.options.confirm_timeout / WATCHDOG_CHECKS, 0.05)
        self._watchdog = asyncio.get_running_loop().call_later(interval, self._watch)

    def _watch(self) -> None:
        """A channel that holds unconfirmed messages and confirmed nothing for the confirm timeout is
        abandoned; without any channel for as long as every attempt could take, queued messages fail."""
        now = asyncio.get_running_loop().time()
        timeout = self.options.confirm_timeout
        lane = self._lane
        if lane is not None and lane.unsettled and now - lane.progress_at > timeout:
            self._abandon(lane, f"no confirm within {timeout:g}s")
        elif (
            lane is None
            and self._no_lane_since is not None
            and now - self._no_lane_since > timeout * self.options.max_attempts
        ):
            self._fail_waiting(
                f"no channel to the broker for {now - self._no_lane_since:.0f}s ({self.problem})"
            )
        self._arm_watchdog()

    def _fail_waiting(self, reason: str) -> None:
        """Fail everything queued or waiting to be re-sent (not what is in flight)."""
        waiting = [*self._queue, *self._delayed]
        self._queue.clear()
        self._delayed.clear()
        for message in waiting:
            if not message.tally.cancelled:
                message.tally.fail(message, reason)
        self._room.set()


def envelopes(events: Iterable[AnyEvent], size: int) -> list[list[AnyEvent]]:
    """Events grouped by topic (in order of first appearance) into lists of at most `size`."""
    by_topic: dict[str, list[list[AnyEvent]]] = {}
    for item in events:
        groups = by_topic.get(item.topic)
        if groups is None:
            by_topic[item.topic] = [[item]]
        elif len(groups[-1]) < size:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [group for groups in by_topic.values() for group in groups]


class EnvelopeBatch:
    """A stream of events: envelopes by topic (size, linger), handed to the publisher as they fill.

    An envelope goes when it is full, or `linger` seconds after its first event; with a linger of 0, at the
    end of the loop turn its first event came in (what arrived in that turn shares it), never later."""

    def __init__(self, publisher: ConfirmingPublisher, on_confirmed: OnConfirmed | None = None) -> None:
        self.publisher = publisher
        self._tally = Tally(on_confirmed)
        self._size = publisher.options.envelope_size
        self._keep_order = publisher.options.keep_order
        self._buffers: dict[str, list[AnyEvent]] = {}
        self._timers: dict[str, asyncio.Handle] = {}

    @property
    def confirmed(self) -> int:
        return self._tally.confirmed

    @property
    def written(self) -> int:
        """Events written towards the broker (handed to the connection's writer), confirmed or not."""
        return self._tally.written

    async def add(self, item: AnyEvent) -> None:
        publisher = self.publisher
        if len(publisher._queue) >= publisher.options.max_in_flight:
            await publisher.room()
        if self._size == 1:
            publisher.submit_one(Message([item], self._tally))
            return
        if self._keep_order and self._buffers and item.topic not in self._buffers:
            for topic in list(self._buffers):
                self._send(topic)
        buffer = self._buffers.setdefault(item.topic, [])
        buffer.append(item)
        if len(buffer) >= self._size:
            self._send(item.topic)
        elif len(buffer) == 1:
            loop, linger = asyncio.get_running_loop(), publisher.options.linger
            self._timers[item.topic] = (
                loop.call_later(linger, self._send, item.topic)
                if linger > 0
                else loop.call_soon(self._send, item.topic)
            )

    async def flush(self) -> None:
        """Send every partial envelope, wait for every confirm; raise PublishFailed if any envelope failed."""
        for topic in list(self._buffers):
            self._send(topic)
        await self._tally.wait()

    def _send(self, topic: str) -> None:
        timer = self._timers.pop(topic, None)
        if timer is not None:
            timer.cancel()
        events = self._buffers.pop(topic, None)
        if events:
            self.publisher.submit((Message(events, self._tally),), soon=True)
