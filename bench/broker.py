"""The benchmark's own broker link: reachability, "is the consumer attached?", and deleting what a run made.

Every run gets names of its own (`bench-<uuid>.events`, ...), so runs never share a queue and a crashed run
cannot leave messages for the next one. Whatever a run declared is deleted when it ends, even on failure or
Ctrl-C; names that could not be deleted are kept in `leftovers` so the caller can say so.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from contract import commits
from contract.config import redact
from contract.topology import Topology, declare

CONNECT_TIMEOUT = 10.0
OPERATION_TIMEOUT = 10.0
ATTACH_POLL = 0.02


class BrokerUnreachable(Exception):
    """The broker did not accept a connection at the configured URL."""


class BenchError(Exception):
    """A run failed; the message says why. The run is reported, never turned into a number."""


def fresh_topology() -> Topology:
    """Names nobody else uses; the dead-letter names follow the product's own pattern."""
    prefix = f"bench-{uuid.uuid4().hex}"
    return Topology.named(f"{prefix}.events", f"{prefix}.aggregator")


class BrokerLink:
    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self.leftovers: set[Topology] = set()
        self.server_version = "unknown"

    async def connect(self) -> None:
        if urlsplit(self.url).scheme not in ("amqp", "amqps"):
            raise BrokerUnreachable(f"AMQP_URL must start with amqp:// or amqps://, got {redact(self.url)!r}")
        try:
            self._connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT)
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerUnreachable(
                f"RabbitMQ at {redact(self.url)} refused the login; check the user and password in AMQP_URL"
            ) from exc
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            reason = str(exc).rstrip(".") or type(exc).__name__
            raise BrokerUnreachable(
                f"cannot reach RabbitMQ at {redact(self.url)} ({reason}). "
                "Start one (e.g. `rabbitmq-server -detached`) or point AMQP_URL at one."
            ) from exc
        transport = self._connection.transport
        properties = transport.connection.server_properties if transport is not None else {}
        version = properties.get("version")
        self.server_version = version.decode() if isinstance(version, bytes) else str(version)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()

    async def _channel(self) -> AbstractChannel:
        # Reconnect on demand: cleanup must still work if the broker dropped us mid-run.
        if self._connection is None or self._connection.is_closed:
            await self.connect()
        if self._connection is None:
            raise RuntimeError("no broker connection")
        return await self._connection.channel()

    async def consumer_count(self, queue: str) -> int | None:
        """Consumers on `queue` by passive declare; None while the queue does not exist yet."""
        channel = await self._channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None  # the broker closed the channel; nothing to close here
        finally:
            if not channel.is_closed:
                await channel.close()

    async def wait_attached(
        self,
        queue: str,
        alive: Callable[[], bool],
        timeout: float,
        why: Callable[[], str] = str,
        expected: int = 1,
    ) -> float:
        """Wait until exactly `expected` consumers are attached to `queue`; returns the seconds it took."""
        started = time.perf_counter()
        while True:
            count = await asyncio.wait_for(self.consumer_count(queue), OPERATION_TIMEOUT)
            if count == expected:
                return time.perf_counter() - started
            if count is not None and count > expected:
                raise BenchError(f"{count} consumers on {queue}, expected {expected}")
            if not alive():
                raise BenchError(f"the consumer exited before it started consuming: {why()}")
            if time.perf_counter() - started > timeout:
                raise BenchError(f"the consumer did not attach to {queue} within {timeout:g}s")
            await asyncio.sleep(ATTACH_POLL)

    async def declare(self, topology: Topology) -> None:
        """Declare a run's topology, for an api that should see its queues without a consumer."""
        channel = await self._channel()
        try:
            await asyncio.wait_for(declare(channel, topology), OPERATION_TIMEOUT)
        finally:
            if not channel.is_closed:
                await channel.close()

    def track(self, topology: Topology) -> None:
        self.leftovers.add(topology)

    async def delete(self, topology: Topology) -> None:
        """Delete the run's queues and exchanges (deleting what does not exist is a no-op in RabbitMQ)."""
        channel = await self._channel()
        try:
            for queue in (topology.queue, topology.dead_letter_queue):
                await asyncio.wait_for(channel.queue_delete(queue), OPERATION_TIMEOUT)
            # The commit notices' exchange too (contract/commits.py): the run's consumer declared it.
            exchanges = (topology.exchange, topology.dead_letter_exchange, commits.exchange_name(topology))
            for exchange in exchanges:
                await asyncio.wait_for(channel.exchange_delete(exchange), OPERATION_TIMEOUT)
        finally:
            if not channel.is_closed:
                await channel.close()
        self.leftovers.discard(topology)

    async def delete_leftovers(self) -> list[str]:
        """Retry what could not be deleted; returns the names still on the broker."""
        for topology in list(self.leftovers):
            try:
                await self.delete(topology)
            except (OSError, TimeoutError, aiormq.exceptions.AMQPError, BrokerUnreachable):
                pass
        return sorted(
            name
            for t in self.leftovers
            for name in (t.queue, t.dead_letter_queue, t.exchange, t.dead_letter_exchange)
        )
