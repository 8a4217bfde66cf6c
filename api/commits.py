"""The api's one subscription to the consumers' commit notices (contract/commits.py), shared by every reader.

One task per api: it binds an exclusive, auto-delete queue of its own to the notices exchange, so every api
replica hears every consumer's commits, and the broker deletes the queue when the api goes. Listeners (the
receipt watcher of `?wait=stored`, the live tail) hear each notice, and every change of `live`: while the
subscription is down, notices are lost, and a listener must fall back to reading the store.

The store's writers also send each notice themselves, one hop shorter: PostgreSQL's `NOTIFY` from the
batch's transaction, heard on a `LISTEN` connection (store/postgres/notices.py), or on SQLite a datagram from
the writer's thread to a socket beside the store's file (store/sqlite/notices.py). The feed hears both and
is live while either is up: a consumer publishes every notice on the broker too (consumers of the earlier
release only there), so a notice lost on one path usually comes on the other, and one heard twice changes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from typing import Protocol

from aiormq.abc import DeliveredMessage
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.broker import BrokerLink, BrokerUnavailable
from broker.connection import BROKER_ERRORS
from contract import commits
from contract.commits import Notice
from contract.topology import Topology
from store import StoreSettings, commit_listener

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
# After a lost subscription: the next one waits for the link anyway; this only keeps a channel the broker
# keeps closing from turning the loop into a busy one.
RESUBSCRIBE_PAUSE = 0.05


# RuntimeError: aio-pika's own, from a connection closing under the call. The feed must outlive all of them:
# while it is down every waiting request reads the store on a timer.
_NO_CHANNEL: tuple[type[Exception], ...] = (BrokerUnavailable, *BROKER_ERRORS, RuntimeError)


class FeedListener(Protocol):
    def on_notice(self, notice: Notice) -> None: ...

    def on_live(self, live: bool) -> None:
        """The subscription came up (True: notices flow from now on) or went down (False)."""
        ...


class CommitFeed:
    def __init__(
        self,
        broker: BrokerLink,
        topology: Topology,
        retry_interval: float,
        store: StoreSettings | None = None,
    ) -> None:
        self._broker = broker
        self._exchange = commits.exchange_name(topology)
        self._retry = retry_interval
        self._listeners: list[FeedListener] = []
        self._task: asyncio.Task[None] | None = None
        self._store = (
            commit_listener(store, self._heard, self._on_store_live, retry_interval) if store else None
        )
        self._up = {"broker": False, "store": False}
        self.live = False
        self.live_since = 0.0  # time.monotonic() when the subscription last came up
        self.notices = 0  # notices received since the api started
        self.subscriptions = 0  # times the subscription came up

    def listen(self, listener: FeedListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-feed")
        if self._store is not None:
            self._store.start()

    async def _run(self) -> None:
        while True:
            try:
                connection = await self._broker.connection()  # waits for the link to be up
                channel = await connection.channel(publisher_confirms=False)
            except _NO_CHANNEL as exc:
                log.debug("commit notices: no channel error=%s", exc)
                await asyncio.sleep(self._retry)
                continue
            subscribed = False
            try:
                # The underlying channel, not aio-pika's robust one: a server-named exclusive queue must be
                # declared afresh after a reconnect, and the moment of losing it must be known exactly.
                underlay = await channel.get_underlay_channel()
                await underlay.exchange_declare(self._exchange, exchange_type="fanout", durable=True)
                declared = await underlay.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.queue
                if queue is None:
                    raise RuntimeError("the broker named no queue")
                await underlay.queue_bind(queue, self._exchange)
                await underlay.basic_consume(queue, self._on_message, no_ack=True)
                subscribed = True
                self._set_up("broker", True)
                log.info("commit notices subscribed exchange=%s queue=%s", self._exchange, queue)
                # Until the channel or its connection goes; wait() never raises what closed it.
                await asyncio.wait({underlay.closing})
                pause = RESUBSCRIBE_PAUSE
            except _NO_CHANNEL as exc:
                log.warning("commit notices: subscription failed error=%r; retrying", exc)
                pause = self._retry
            finally:
                if subscribed:
                    self._set_up("broker", False)
                    log.warning("commit notices from the broker lost; subscribing again")
                with suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await channel.close()
            await asyncio.sleep(pause)

    async def _on_message(self, message: DeliveredMessage) -> None:
        self._heard(message.body)

    def _on_store_live(self, up: bool) -> None:
        self._set_up("store", up)

    def _heard(self, body: bytes) -> None:
        notice = commits.decode(body)
        if notice is None:
            return
        self.notices += 1
        for listener in self._listeners:
            listener.on_notice(notice)

    def _set_up(self, path: str, up: bool) -> None:
        self._up[path] = up
        live = any(self._up.values())
        if live == self.live:
            return
        self.live = live
        if live:
            self.live_since = time.monotonic()
            self.subscriptions += 1
        else:
            log.warning("commit notices lost; waiting requests read the store until they are back")
        for listener in self._listeners:
            listener.on_live(live)

    def live_for(self) -> float:
        """Seconds the subscription has been up without a break; 0 while it is down."""
        return time.monotonic() - self.live_since if self.live else 0.0

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


class FeedCollector(Collector):
    """/metrics: the subscription's state and notices, the receipt reads they caused, by reason, and where the
    awaited receipts' figures came from."""

    def __init__(self, feed: CommitFeed, reads: Counter[str], found: Counter[str] | None = None) -> None:
        self._feed = feed
        self._reads = reads
        self._found = found if found is not None else Counter()

    def collect(self) -> Iterable[Metric]:
        feed = self._feed
        yield GaugeMetricFamily(
            "eventagg_commit_notices_up",
            "1 while the api is subscribed to commit notices",
            value=int(feed.live),
        )
        yield CounterMetricFamily(
            "eventagg_commit_notices", "commit notices received from the consumers", value=feed.notices
        )
        yield CounterMetricFamily(
            "eventagg_commit_notice_subscriptions",
            "times the subscription to commit notices came up (more than 1: it was lost and made again)",
            value=feed.subscriptions,
        )
        reads = CounterMetricFamily(
            "eventagg_receipt_reads",
            "store reads for the receipts of waiting ?wait=stored requests, by what caused them: a notice, "
            "polled (notices down), recheck (notices back: the gap's may be lost), deadline (a request's "
            "last)",
            labels=("reason",),
        )
        for reason in ("notice", "polled", "recheck", "deadline"):
            reads.add_metric((reason,), self._reads[reason])
        yield reads
        found = CounterMetricFamily(
            "eventagg_receipts_found",
            "receipts of waiting ?wait=stored requests found, by where their figures came from: a commit "
            "notice (no store read) or the store",
            labels=("source",),
        )
        for source in ("notice", "store"):
            found.add_metric((source,), self._found[source])
        yield found
