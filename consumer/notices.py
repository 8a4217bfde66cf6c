"""The consumer's commit notices (contract/commits.py), sent after each commit on a connection of their own.

The store's writer sends each notice too, one hop shorter (store/postgres/notices.py and
store/sqlite/notices.py); this broker copy reaches every api all the same: one of the earlier release, or one
that cannot hear the store's.

A notice is unconfirmed and transient: a lost one costs an api one read of the store (api/stored.py), never
a wrong answer, so it is worth neither a confirm's round trip nor a write to the broker's disk. It carries
the figures of the receipts its commits inserted (up to commits.FIGURES_PER_NOTICE), so a waiting request
answers without reading the store at all.

Its own connection, because RabbitMQ blocks a connection that publishes while a memory or disk alarm is in
effect, reading nothing more from it: on the consume connection that would stop the acks, which are what
frees the broker's space. And never awaited by the commit: a notice is sent in the background, and the
commits that land while one is on its way go out together in the next.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress

from aio_pika import ExchangeType
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from broker import connection as amqp
from broker.connection import BROKER_ERRORS
from contract import commits
from contract.topology import Topology

log = logging.getLogger(__name__)

_TRANSIENT = Basic.Properties(delivery_mode=1, content_type="application/json")
CLOSE_TIMEOUT = 2.0
# RuntimeError: aio-pika's own, from a connection that is closing already.
_CLOSE_ERRORS: tuple[type[Exception], ...] = (*BROKER_ERRORS, RuntimeError)


class CommitNotices:
    def __init__(self, urls: Sequence[str], topology: Topology, reconnect_interval: float) -> None:
        self._urls = urls
        self._exchange = commits.exchange_name(topology)
        self._reconnect_interval = reconnect_interval
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._underlay: AbstractChannel | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._sending: asyncio.Task[None] | None = None
        self._receipts: list[str] = []
        self._figures: dict[str, tuple[int, int]] = {}  # of the receipts above that carry them
        self._stored = 0
        self._failing = False

    def start(self) -> None:
        """Connect in the background: consuming never waits for it, and until it is up no notice goes out."""
        self._connecting = asyncio.create_task(self._connect(), name="commit-notices-connect")

    async def _connect(self) -> None:
        # Until the channel is up: a connection lost between its open and the channel's (a node going away
        # just then) is tried again, never left as a failed task that nobody awaits.
        while True:
            connection = await amqp.connect(
                self._urls, name="eventagg-consumer-notices", reconnect_interval=self._reconnect_interval
            )
            if connection is None:
                return
            self._connection = connection  # close() closes it, even while the channel opens
            try:
                await self._open(connection)
            except _CLOSE_ERRORS as exc:
                interval = self._reconnect_interval
                log.warning("commit notices not ready error=%r; connecting again in %.1fs", exc, interval)
                self._connection = None
                with suppress(TimeoutError, *_CLOSE_ERRORS):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await connection.close()
                await asyncio.sleep(interval)
                continue
            log.info("commit notices ready exchange=%s", self._exchange)
            return

    async def _open(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        if not isinstance(channel, AbstractRobustChannel):
            raise TypeError("a robust connection gives robust channels")
        # Declared through aio-pika, so the robust channel declares it again on every reopen.
        await channel.declare_exchange(self._exchange, ExchangeType.FANOUT, durable=True)
        self._channel = channel
        channel.reopen_callbacks.add(self._on_reopen)
        await self._on_reopen(None)

    async def _on_reopen(self, _: object) -> None:
        if self._channel is not None:
            self._underlay = await self._channel.get_underlay_channel()

    def committed(
        self, receipts: list[str], stored: int, figures: Sequence[tuple[str, int, int]] = ()
    ) -> None:
        """Tell every api that a batch committed: returns at once, never raises. `figures`: (receipt, new,
        duplicates) of the receipts the commit inserted (store.base.BatchResult.receipts)."""
        self._receipts += receipts
        self._stored += stored
        room = commits.FIGURES_PER_NOTICE - len(self._figures)
        for receipt, new, duplicates in figures[:room] if room > 0 else ():
            self._figures[receipt] = (new, duplicates)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="commit-notice")

    async def _send(self) -> None:
        while self._receipts or self._stored:
            receipts, stored, figures = self._receipts, self._stored, self._figures
            self._receipts, self._stored, self._figures = [], 0, {}
            underlay = self._underlay
            if underlay is None or underlay.is_closed:
                return  # not connected (yet): the apis read the store for what they wait for
            try:
                await underlay.basic_publish(
                    commits.encode(receipts, stored, ((r, n, d) for r, (n, d) in figures.items())),
                    exchange=self._exchange,
                    properties=_TRANSIENT,
                )
            except BROKER_ERRORS as exc:
                if not self._failing:
                    log.warning("commit notice not sent error=%r; apis fall back to reading the store", exc)
                self._failing = True
                return
            self._failing = False

    async def close(self) -> None:
        if self._sending is not None and not self._sending.done():
            # The last commits' notice: a request waiting on them need not read at its deadline.
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sending), CLOSE_TIMEOUT)
        for task in (self._connecting, self._sending):
            if task is not None and not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError, *BROKER_ERRORS):
                    await task
        if self._connection is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._connection.close()
            except _CLOSE_ERRORS as exc:
                log.debug("notices connection not closed cleanly error=%s", type(exc).__name__)
