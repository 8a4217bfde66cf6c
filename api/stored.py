"""Read-your-writes publishing (`?wait=stored`): messages carrying receipts, and one watcher of the store.

Each message of such a request carries a receipt id in the AMQP header `x-receipt`. The consumer records,
in the same transaction that stores the batch and moves the counters, each receipt with how many events of
that message it stored and how many were already there. So a request knows exactly when its own messages
took effect and which copy of an event was the one stored: of 20 identical concurrent requests, exactly one
receipt says "new", and once every reply has arrived every copy is already counted in /stats.

Waiting requests never poll the store themselves: one watcher task, running only while someone waits, asks
the store every few milliseconds for the receipts that are still awaited, all of them in one query.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from contract import event as wire
from contract.amqp import RECEIPT_HEADER
from contract.event import Event
from contract.topology import Topology

log = logging.getLogger(__name__)

# Often enough that a reply follows the commit by a few milliseconds; one query per tick for all waiters.
WATCH_INTERVAL = 0.005
# Receipts asked for in one query at most (SQLite's bound-parameter limit is 32,766).
QUERY_CHUNK = 1000


class ReceiptReader(Protocol):
    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """For each id found: (events that message stored, events of it that were already stored)."""
        ...


class ReceiptsNotConfirmed(Exception):
    """The broker did not confirm (or returned) a message of the request; nothing to wait for."""


@dataclass(slots=True)
class Waited:
    """What a request learned: receipts found (new, duplicates) and how many events are still pending."""

    new: int = 0
    duplicates: int = 0
    pending: int = 0


@dataclass(slots=True, eq=False)  # hashed by identity: the watcher keeps a set of them
class _Waiter:
    ids: set[str]
    found: dict[str, tuple[int, int]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ReceiptWatcher:
    """One task that watches the store for the receipts of every waiting request."""

    def __init__(self, reader: ReceiptReader, interval: float = WATCH_INTERVAL) -> None:
        self._reader = reader
        self._interval = interval
        self._waiters: set[_Waiter] = set()
        self._task: asyncio.Task[None] | None = None

    async def wait(self, messages: dict[str, int], timeout: float) -> Waited:
        """Wait until every receipt id in `messages` (id → events in that message) is in the store, or until
        `timeout`; returns what was found, and how many events are still pending."""
        waiter = _Waiter(set(messages))
        self._waiters.add(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="receipt-watcher")
        try:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter.done.wait()
        finally:
            self._waiters.discard(waiter)
        result = Waited()
        for receipt, size in messages.items():
            if receipt in waiter.found:
                new, duplicates = waiter.found[receipt]
                result.new += new
                result.duplicates += duplicates
            else:
                result.pending += size
        return result

    async def _watch(self) -> None:
        # Runs only while someone waits; the next waiter starts it again.
        while self._waiters:
            waiting = [w for w in self._waiters if not w.done.is_set()]
            wanted = sorted({i for w in waiting for i in w.ids - w.found.keys()})
            try:
                found: dict[str, tuple[int, int]] = {}
                for start in range(0, len(wanted), QUERY_CHUNK):
                    found.update(await self._reader.receipts(wanted[start : start + QUERY_CHUNK]))
            except Exception as exc:  # the store may be missing or failing: keep waiting until the deadline
                log.debug("receipt query failed error=%s: %s", type(exc).__name__, exc)
                found = {}
            for waiter in waiting:
                for receipt in waiter.ids & found.keys():
                    waiter.found[receipt] = found[receipt]
                if len(waiter.found) == len(waiter.ids):
                    waiter.done.set()
            await asyncio.sleep(self._interval)

    def watching(self) -> bool:
        """Whether the watcher task runs (only while someone waits)."""
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


class ReceiptPublisher:
    """Publishes a request's events in envelopes of one topic, each with its own receipt id, on a channel of
    its own (off the shim's hot path), persistent and mandatory, and returns once the broker confirmed all."""

    def __init__(self, topology: Topology, envelope_size: int) -> None:
        self._topology = topology
        self._envelope_size = envelope_size
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _exchange_on(self, connection: AbstractRobustConnection) -> AbstractExchange:
        async with self._lock:
            if self._channel is None or self._channel.is_closed or self._exchange is None:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                if not isinstance(channel, AbstractRobustChannel):
                    raise TypeError("a robust connection gives robust channels")
                # The shim's own publisher declared the topology when the link came up.
                self._exchange = await channel.get_exchange(self._topology.exchange, ensure=False)
                self._channel = channel
            return self._exchange

    def envelopes(self, events: Sequence[Event]) -> dict[str, list[Event]]:
        """The request's events grouped by topic into envelopes, each under a fresh receipt id."""
        by_topic: dict[str, list[Event]] = {}
        for item in events:
            by_topic.setdefault(item.topic, []).append(item)
        out: dict[str, list[Event]] = {}
        for group in by_topic.values():
            for start in range(0, len(group), self._envelope_size):
                out[uuid.uuid4().hex] = group[start : start + self._envelope_size]
        return out

    async def publish(self, connection: AbstractRobustConnection, envelopes: dict[str, list[Event]]) -> None:
        """Raises ReceiptsNotConfirmed, or the broker's error, when a message was not confirmed."""
        exchange = await self._exchange_on(connection)

        async def send(receipt: str, events: list[Event]) -> None:
            message = aio_pika.Message(
                wire.encode(events),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=events[0].event_id if len(events) == 1 else receipt,
                timestamp=datetime.now(UTC),  # the consumer's publish-to-commit lag, as contract/confirms.py
                headers={RECEIPT_HEADER: receipt},
            )
            try:
                await exchange.publish(message, events[0].topic, mandatory=True)
            except aiormq.exceptions.PublishError as exc:
                raise ReceiptsNotConfirmed(f"unroutable via exchange {self._topology.exchange!r}") from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise ReceiptsNotConfirmed(f"the broker refused a message: {exc}") from exc

        await asyncio.gather(*(send(receipt, events) for receipt, events in envelopes.items()))

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            with suppress(Exception):
                await self._channel.close()
