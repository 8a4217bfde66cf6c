"""The api's link to the broker: one robust connection, made in the background, for publishing and probes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection

from api.settings import ApiSettings
from broker import connection as amqp
from broker.connection import BROKER_ERRORS
from broker.publisher import ConfirmingPublisher, PublishOptions
from contract.config import scrub
from contract.topology import queue_depth

log = logging.getLogger(__name__)

# How many TTLs old a good queue-depth reading may be and still be answered while a new one is taken.
STALE_FACTOR = 5


class BrokerUnavailable(Exception):
    """No connection to the broker right now."""


@dataclass(frozen=True, slots=True)
class Depths:
    queue: int | None
    dead_letter_queue: int | None
    error: str | None
    consumers: int | None = None
    measured_at: float | None = None  # time.time() of a good reading, which is reused (BROKER_PROBE_TTL)


class BrokerLink:
    """Reads never wait for it: while the broker is down the api keeps serving, and publish answers 503."""

    def __init__(self, settings: ApiSettings) -> None:
        self._settings = settings
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmingPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._probe: tuple[float, Depths] | None = None
        self._probe_lock = asyncio.Lock()
        self._refresh: asyncio.Task[Depths] | None = None
        self.last_error: str | None = "not connected yet"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BrokerLink]:
        self._task = asyncio.create_task(self._connect_forever(), name="broker-connect")
        try:
            yield self
        finally:
            for task in (self._task, self._refresh):
                if task is not None:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
            if self._publisher is not None:
                await self._publisher.close()
            if self._connection is not None:
                with suppress(Exception):
                    await self._connection.close()

    async def _connect_forever(self) -> None:
        s = self._settings
        options = PublishOptions(
            envelope_size=s.envelope_size,
            linger=0,
            confirm_timeout=s.publish_timeout,
            max_attempts=2,
        )
        unusable_said = False
        while True:
            connection = await amqp.connect(
                s.amqp_urls(),
                name="eventagg-api",
                reconnect_interval=s.reconnect_interval,
                timeout=s.publish_timeout,
                on_error=self._failed,
            )
            if connection is None:
                raise RuntimeError("amqp.connect gave up without a stop event or an attempt limit")
            try:
                self._publisher = await ConfirmingPublisher.start(connection, s.topology(), options)
                break
            except BROKER_ERRORS as exc:
                # Connected, but the topology could not be declared (a node without the queue's majority).
                with suppress(Exception):
                    await connection.close()
                self._failed(exc)
                if not unusable_said:  # once: every reconnect interval would repeat the same line
                    log.warning(
                        "broker connected but not usable node=%s error=%s; publish answers 503 until it is",
                        connection.node,
                        self.last_error,
                    )
                    unusable_said = True
                await asyncio.sleep(s.reconnect_interval)
        # From here on the robust connection reconnects by itself, moving between the nodes of AMQP_URL,
        # and the publisher opens a new channel on it whenever its channel went away.
        self._connection = connection
        self._ready.set()
        self.last_error = None

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {scrub(str(exc))}"

    def connected(self) -> bool:
        # `connected` is cleared while the robust connection is re-establishing itself after a loss.
        return (
            self._ready.is_set()
            and self._connection is not None
            and not self._connection.is_closed
            and self._connection.connected.is_set()
        )

    def problem(self) -> str:
        """Why the link is down, for 503 answers and /health."""
        return self.last_error or "connection lost; reconnecting"

    async def publisher(self) -> ConfirmingPublisher:
        """The publisher once the link is up; waits for it (the caller bounds the wait with its deadline)."""
        publisher, connection = self._publisher, self._connection
        if publisher is not None and connection is not None and connection.connected.is_set():
            # Up (the connection is set only once the publisher started, with `_ready`): every request of a
            # running api comes here, and neither wait below would suspend it.
            return publisher
        await self._ready.wait()
        if self._publisher is None or self._connection is None:
            raise BrokerUnavailable("the broker link closed")
        # A request that arrives during a reconnect waits for it rather than failing at once.
        await self._connection.connected.wait()
        return self._publisher

    async def connection(self) -> AbstractRobustConnection:
        """The connection once the link is up, for ?wait=stored's own channel; waits like publisher()."""
        await self._ready.wait()
        if self._connection is None:
            raise BrokerUnavailable("the broker link closed")
        await self._connection.connected.wait()
        return self._connection

    async def depths(self) -> Depths:
        """Exact queue depths by passive declare, cached briefly; never raises.

        A good reading up to a few TTLs old is answered at once while a fresh one is taken in the
        background: a probe costs a channel and two round trips, and the request that happened to find the
        cache expired would otherwise wait for it (it was the slowest /stats request in every hundred).
        """
        if self._probe is not None:
            age = time.monotonic() - self._probe[0]
            ttl = self._settings.broker_probe_ttl
            if age < ttl:
                return self._probe[1]
            if age < ttl * STALE_FACTOR and self.connected():
                if self._refresh is None or self._refresh.done():
                    self._refresh = asyncio.create_task(self._probe_now(), name="broker-probe")
                return self._probe[1]
        return await self._probe_now()

    async def _probe_now(self) -> Depths:
        async with self._probe_lock:
            now = time.monotonic()
            if self._probe is not None and now - self._probe[0] < self._settings.broker_probe_ttl:
                return self._probe[1]
            depths = await self._read_depths()
            # Only a good reading is reused; after a failure the next request asks the broker again.
            self._probe = (now, depths) if depths.error is None else None
            return depths

    async def _read_depths(self) -> Depths:
        if not self.connected() or self._connection is None:
            return Depths(None, None, self.problem())
        topology = self._settings.topology()
        try:
            # A passive declare of a missing queue closes its channel, so each probe gets a throwaway one.
            async with asyncio.timeout(self._settings.publish_timeout):
                channel = await self._connection.channel(publisher_confirms=False)
                async with channel:
                    queue, consumers = await queue_depth(channel, topology.queue)
                    dead, _ = await queue_depth(channel, topology.dead_letter_queue)
            return Depths(queue, dead, None, consumers, time.time())
        except BROKER_ERRORS as exc:
            log.warning("queue depth probe failed error=%s: %s", type(exc).__name__, exc)
            return Depths(None, None, f"{type(exc).__name__}: {exc}")
