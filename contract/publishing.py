"""The confirming publisher: envelopes by topic, confirms in flight, re-send until confirmed or give up."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from contract import event as wire
from contract.amqp import connect as amqp_connect
from contract.amqp import parse_urls
from contract.event import Event
from contract.topology import Topology, declare

log = logging.getLogger(__name__)

# Long enough to fill envelopes at a moderate rate, short enough for publish-to-queryable p99 < 100 ms at
# 1,000 events/s (50 ms gave 101 ms here); a fast stream fills its envelopes long before it expires.
DEFAULT_LINGER = 0.02

# Called with the events of each message (or request) once the broker confirmed it.
OnConfirmed = Callable[[list[Event]], None]


@dataclass(frozen=True, slots=True)
class PublishOptions:
    envelope_size: int = 100
    linger: float = DEFAULT_LINGER
    max_in_flight: int = 256
    confirm_timeout: float = 5.0
    max_attempts: int = 5
    retry_backoff: float = 0.2

    def __post_init__(self) -> None:
        if self.envelope_size < 1:
            raise ValueError(f"envelope size must be at least 1, got {self.envelope_size}")
        if self.max_in_flight < 1 or self.max_attempts < 1:
            raise ValueError("max_in_flight and max_attempts must be at least 1")
        if self.linger < 0 or self.confirm_timeout <= 0:
            raise ValueError("linger must be >= 0 and confirm_timeout > 0")


class PublishFailed(Exception):
    """Some events were not confirmed by the broker after every attempt; they may or may not have arrived."""

    def __init__(self, unconfirmed: Sequence[Event], reason: str) -> None:
        self.unconfirmed = list(unconfirmed)
        self.reason = reason
        super().__init__(f"{len(self.unconfirmed)} event(s) not confirmed by the broker: {reason}")


class Unroutable(PublishFailed):
    """The broker returned the message: nothing is bound to the exchange for it (topology missing)."""


# Errors after which a re-send can succeed: a nack, a lost confirm, a lost connection or channel.
_RETRYABLE = (
    aiormq.exceptions.DeliveryError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPChannelError,
    ConnectionError,
    TimeoutError,
)


class ConfirmingPublisher:
    """Publishes envelopes and returns only when the broker confirmed them (persistent, mandatory)."""

    def __init__(self, channel: AbstractChannel, exchange: AbstractExchange, options: PublishOptions) -> None:
        self._channel = channel
        self._exchange = exchange
        self.options = options
        self.slots = asyncio.Semaphore(options.max_in_flight)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        topology: Topology,
        options: PublishOptions | None = None,
        *,
        connection_name: str = "eventagg-publisher",
    ) -> AsyncIterator[ConfirmingPublisher]:
        # Each node of the URL list once, from a random one: a publisher that cannot reach any says so
        # instead of waiting; once connected it fails over between the nodes by itself.
        urls = parse_urls(url)
        connection = await amqp_connect(urls, name=connection_name, attempts=len(urls))
        if connection is None:
            raise RuntimeError("amqp.connect returned no connection without a stop event")
        async with connection, cls.open(connection, topology, options) as publisher:
            yield publisher

    @classmethod
    @asynccontextmanager
    async def open(
        cls, connection: AbstractRobustConnection, topology: Topology, options: PublishOptions | None = None
    ) -> AsyncIterator[ConfirmingPublisher]:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        async with channel:
            yield await cls.on_channel(channel, topology, options)

    @classmethod
    async def on_channel(
        cls, channel: AbstractChannel, topology: Topology, options: PublishOptions | None = None
    ) -> ConfirmingPublisher:
        """A publisher on a channel opened with publisher_confirms=True and on_return_raises=True."""
        # Declaring the whole topology here means events published before any consumer ran are queued,
        # not dropped as unroutable.
        declared = await declare(channel, topology)
        return cls(channel, declared.exchange, options or PublishOptions())

    def batch(self, on_confirmed: OnConfirmed | None = None) -> EnvelopeBatch:
        return EnvelopeBatch(self, on_confirmed)

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish all events grouped into envelopes; raises PublishFailed naming what was not confirmed."""
        batch = self.batch()
        for item in events:
            await batch.add(item)
        await batch.flush()

    async def send_envelope(self, events: Sequence[Event]) -> None:
        """One message, re-sent until confirmed or attempts run out. All events must share one topic."""
        body = wire.encode(list(events))
        message_id = events[0].event_id if len(events) == 1 else uuid.uuid4().hex
        routing_key = events[0].topic
        attempts = self.options.max_attempts
        for attempt in range(1, attempts + 1):
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
            )
            try:
                # The timeout also bounds waiting for a reconnecting robust channel, not only the confirm.
                async with asyncio.timeout(self.options.confirm_timeout):
                    await self._exchange.publish(message, routing_key, mandatory=True)
                return
            except aiormq.exceptions.PublishError as exc:
                raise Unroutable(events, f"unroutable via exchange {self._exchange.name!r}") from exc
            except _RETRYABLE as exc:
                remaining = attempts - attempt
                if remaining == 0:
                    raise PublishFailed(events, f"{type(exc).__name__}: {exc}") from exc
                log.warning(
                    "publish not confirmed, re-sending events=%d error=%s attempts_left=%d",
                    len(events),
                    type(exc).__name__,
                    remaining,
                )
                await self._wait_until_ready(self.options.retry_backoff * 2 ** (attempt - 1))

    async def _wait_until_ready(self, backoff: float) -> None:
        await asyncio.sleep(backoff)
        ready = getattr(self._channel, "ready", None)
        if ready is not None:
            # A robust channel is restored in the background after a reconnect; waiting here turns the next
            # attempt into a real one instead of an instant failure on a closed channel.
            try:
                await asyncio.wait_for(ready(), timeout=self.options.confirm_timeout)
            except TimeoutError:
                pass


class InFlight:
    """Sends running as tasks, bounded by a shared semaphore; tallies what was confirmed and what failed."""

    def __init__(self, slots: asyncio.Semaphore, on_confirmed: OnConfirmed | None = None) -> None:
        self._slots = slots
        self._on_confirmed = on_confirmed
        self._tasks: set[asyncio.Task[None]] = set()
        self.confirmed = 0
        self.failed: list[Event] = []
        self.reasons: list[str] = []

    async def start(self, events: list[Event], send: Callable[[list[Event]], Awaitable[None]]) -> None:
        # Acquire before creating the task: this is the back-pressure that bounds unconfirmed sends.
        await self._slots.acquire()
        self.spawn(self._deliver(events, send))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Wait for every send; raise PublishFailed naming every event that was not confirmed."""
        try:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        except BaseException:
            # Cancelled (a caller's deadline): stop re-sending in the background; what was not confirmed
            # is the caller's to re-send.
            for task in self._tasks:
                task.cancel()
            raise
        if self.failed:
            raise PublishFailed(self.failed, "; ".join(sorted(set(self.reasons))))

    async def _deliver(self, events: list[Event], send: Callable[[list[Event]], Awaitable[None]]) -> None:
        try:
            await send(events)
        except PublishFailed as exc:
            log.error("giving up on events=%d reason=%s", len(events), exc.reason)
            self.failed.extend(events)
            self.reasons.append(exc.reason)
        else:
            self.confirmed += len(events)
            if self._on_confirmed is not None:
                self._on_confirmed(events)
        finally:
            self._slots.release()


class EnvelopeBatch:
    """Groups events by topic into envelopes (size, linger) and keeps many of them in flight."""

    def __init__(self, publisher: ConfirmingPublisher, on_confirmed: OnConfirmed | None = None) -> None:
        self.publisher = publisher
        self._in_flight = InFlight(publisher.slots, on_confirmed)
        self._buffers: dict[str, list[Event]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def confirmed(self) -> int:
        return self._in_flight.confirmed

    async def add(self, item: Event) -> None:
        options = self.publisher.options
        buffer = self._buffers.setdefault(item.topic, [])
        buffer.append(item)
        if len(buffer) >= options.envelope_size:
            await self._send(item.topic)
        elif len(buffer) == 1 and options.linger > 0:
            loop = asyncio.get_running_loop()
            self._timers[item.topic] = loop.call_later(options.linger, self._linger_expired, item.topic)

    async def flush(self) -> None:
        """Send every partial envelope, wait for every confirm; raise PublishFailed if any envelope failed."""
        for topic in list(self._buffers):
            await self._send(topic)
        await self._in_flight.wait()

    def _linger_expired(self, topic: str) -> None:
        self._timers.pop(topic, None)
        if self._buffers.get(topic):
            self._in_flight.spawn(self._send(topic))

    async def _send(self, topic: str) -> None:
        timer = self._timers.pop(topic, None)
        if timer is not None:
            timer.cancel()
        events = self._buffers.pop(topic, [])
        if events:
            await self._in_flight.start(events, self.publisher.send_envelope)
