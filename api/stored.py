"""Read-your-writes publishing (`?wait=stored`): messages carrying receipts, and one watcher of the store.

Each message of such a request carries a receipt id in the AMQP header `x-receipt`. The consumer records,
in the same transaction that stores the batch and moves the counters, each receipt with how many events of
that message it stored and how many were already there. So a request knows exactly when its own messages
took effect and which copy of an event was the one stored: of 20 identical concurrent requests, exactly one
receipt says "new", and once every reply has arrived every copy is already counted in /stats.

Waiting requests never poll the store themselves. A consumer's commit notice (api/commits.py) carries the
figures its transaction wrote for each receipt it inserted, and a request answers from those at once, with
no read of the store. For a receipt a notice names without figures (a consumer of an earlier release, a
redelivered message, more receipts than a notice carries) one watcher task, running only while someone
waits, reads the store, for all waiters in one query; and it reads every awaited receipt every few
milliseconds while the notices are down, and each request's once at its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from api.commits import FeedListener
from contract import event as wire
from contract.commits import Notice
from contract.event import RECEIPT_HEADER, Event
from contract.topology import Topology

log = logging.getLogger(__name__)

# While commit notices are down (api/commits.py), the store is read this often for every awaited receipt.
WATCH_INTERVAL = 0.005
# Receipts asked for in one query at most (SQLite's bound-parameter limit is 32,766).
QUERY_CHUNK = 1000
# Receipt ids of recent notices (with their figures), kept for a request that registers after its own notice
# went by (the consumer can commit before the broker's confirm reaches the api): seconds of notices at any
# rate.
RECENT_NOTICED = 65_536
# The one read a request makes at its deadline, should every notice of its commit have been lost.
LAST_READ_TIMEOUT = 0.5


class ReceiptReader(Protocol):
    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """For each id found: (events that message stored, events of it that were already stored)."""
        ...


class Feed(Protocol):
    """The api's commit notices (api/commits.CommitFeed), as the watcher uses them."""

    live: bool
    live_since: float  # time.monotonic() when it last came up

    def listen(self, listener: FeedListener) -> None: ...

    def live_for(self) -> float: ...


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
    recheck: bool = False  # its notices may have been lost: read its receipts once

    def missing(self) -> set[str]:
        return self.ids - self.found.keys()

    def take(self, receipt: str, figures: tuple[int, int]) -> None:
        self.found[receipt] = figures
        if len(self.found) == len(self.ids):
            self.done.set()


class ReceiptWatcher:
    """Finds the receipts of every waiting request: in the commit notices, else in the store.

    A notice names the receipts a batch recorded, with the figures the commit wrote for those it inserted;
    a request takes those as they are (they are the store's own, from the same transaction). The receipts a
    notice names without figures, one task reads from the store (all waiters' at once). Without notices (no
    feed, or the subscription down) it reads every awaited receipt each `interval`; once the subscription
    is back it reads every waiter's once more (notices of the gap are lost); and a request whose deadline
    comes reads its own once more before answering 202.
    """

    def __init__(
        self,
        reader: ReceiptReader,
        feed: Feed | None = None,
        interval: float = WATCH_INTERVAL,
        replay_window: float = 0.0,
    ) -> None:
        """`replay_window`: how long after the subscription came up a new waiter still reads the store
        once, because its messages may have committed before (PUBLISH_TIMEOUT bounds a request's publish)."""
        self._reader = reader
        self._feed = feed
        self._interval = interval
        self._replay_window = replay_window
        self._waiters: set[_Waiter] = set()
        self._by_receipt: dict[str, _Waiter] = {}
        self._to_read: set[str] = set()
        # Insertion-ordered, the oldest go first: receipt -> its figures, or None when its notice had none.
        self._noticed: dict[str, tuple[int, int] | None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # What the watcher did, for /metrics and the tests: store reads by reason, and awaited receipts found
        # by where their figures came from ("notice": a notice's, no read; "store": a read's).
        self.reads: Counter[str] = Counter()
        self.found: Counter[str] = Counter()
        if feed is not None:
            feed.listen(self)

    async def wait(self, messages: dict[str, int], timeout: float, started: float | None = None) -> Waited:
        """Wait until every receipt id in `messages` (id → events in that message) is in the store, or until
        `timeout`; returns what was found, and how many events are still pending.

        `started`: time.monotonic() before the messages were published. Their receipts are new, so nothing
        can commit them before: with the notices up since then (and never down in between, which moves
        `live_since`), every commit of theirs comes with a notice, and no read of the store is needed.
        Without it, the replay window decides."""
        if not messages:
            return Waited()  # an empty publish: nothing will ever commit for it
        waiter = _Waiter(set(messages))
        noticed = self._noticed
        for receipt in waiter.ids & noticed.keys():  # its notice came before it waited
            figures = noticed[receipt]
            if figures is not None:
                self.found["notice"] += 1
                waiter.take(receipt, figures)
        self._waiters.add(waiter)
        for receipt in waiter.ids:
            self._by_receipt[receipt] = waiter
        if not waiter.done.is_set():
            feed = self._feed
            if (
                feed is not None
                and feed.live
                and (
                    feed.live_since <= started
                    if started is not None
                    else feed.live_for() >= self._replay_window
                )
            ):
                self._to_read |= waiter.missing() & noticed.keys()
            else:
                waiter.recheck = True
            self._wake.set()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._watch(), name="receipt-watcher")
        try:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter.done.wait()
            if not waiter.done.is_set():
                await self._last_read(waiter)
        finally:
            self._waiters.discard(waiter)
            for receipt in waiter.ids:
                self._by_receipt.pop(receipt, None)
            self._wake.set()  # the task ends once nobody waits
        result = Waited()
        for receipt, size in messages.items():
            if receipt in waiter.found:
                new, duplicates = waiter.found[receipt]
                result.new += new
                result.duplicates += duplicates
            else:
                result.pending += size
        return result

    async def _last_read(self, waiter: _Waiter) -> None:
        """One read of the store at the deadline: a commit whose every notice was lost still answers 200."""
        self.reads["deadline"] += 1
        try:
            async with asyncio.timeout(LAST_READ_TIMEOUT):
                found = await self._read(sorted(waiter.missing()))
            self.found["store"] += len(found)
            waiter.found.update(found)
        except Exception as exc:  # the store may be missing or failing: the request answers 202
            log.debug("receipt query failed error=%s: %s", type(exc).__name__, exc)

    def on_notice(self, notice: Notice) -> None:
        noticed = self._noticed
        carried = notice.figures
        for receipt in notice.receipts:
            figures = carried.get(receipt)
            if figures is not None or receipt not in noticed:  # a later notice without figures keeps them
                noticed[receipt] = figures
            owner = self._by_receipt.get(receipt)
            if owner is None or owner.done.is_set() or receipt in owner.found:
                continue
            if figures is not None:
                self.found["notice"] += 1
                owner.take(receipt, figures)
            else:
                self._to_read.add(receipt)
                self._wake.set()
        while len(noticed) > RECENT_NOTICED:
            del noticed[next(iter(noticed))]

    def on_live(self, live: bool) -> None:
        if live:  # notices of the commits made while it was down are lost: read each waiter's once
            for waiter in self._waiters:
                waiter.recheck = True
        self._wake.set()

    async def _read(self, wanted: list[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(wanted), QUERY_CHUNK):
            found.update(await self._reader.receipts(wanted[start : start + QUERY_CHUNK]))
        return found

    async def _watch(self) -> None:
        # Runs only while someone waits; the next waiter starts it again.
        while self._waiters:
            self._wake.clear()
            live = self._feed is not None and self._feed.live
            wanted, self._to_read = self._to_read, set()
            reason = "notice"
            waiting = [w for w in self._waiters if not w.done.is_set()]
            for waiter in waiting:
                if not live:
                    wanted |= waiter.missing()
                    reason = "polled"
                elif waiter.recheck:
                    wanted |= waiter.missing()
                    reason = "recheck"
                waiter.recheck = False
            wanted &= self._by_receipt.keys()
            if wanted:
                self.reads[reason] += 1
                try:
                    found = await self._read(sorted(wanted))
                except Exception as exc:  # the store may be missing or failing: keep waiting, read again
                    log.debug("receipt query failed error=%s: %s", type(exc).__name__, exc)
                    self._to_read |= wanted
                    found = {}
                    live = False  # retried after the interval, not at once
                for receipt, figures in found.items():
                    owner = self._by_receipt.get(receipt)
                    if owner is not None and receipt not in owner.found:
                        self.found["store"] += 1
                        owner.take(receipt, figures)
            if not live:
                with suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
            elif not self._to_read:
                await self._wake.wait()

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
                message_id=wire.message_id(events, receipt),
                timestamp=datetime.now(UTC),  # the consumer's publish-to-commit lag, as broker/confirms.py
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
