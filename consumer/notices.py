"""The consumer's commit notices (contract/commits.py): one per committed batch, on a channel of its own.

A notice is published after the commit and before the batch is acked, unconfirmed and transient: a lost one
costs an api one read of the store (api/stored.py), never a wrong answer, so it is not worth a confirm's
round trip or a write to the broker's disk. It goes out on its own channel so that nothing about the notices
exchange can ever close the channel that holds the batch's unacked deliveries.
"""

from __future__ import annotations

import logging

from aio_pika import ExchangeType
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from contract import commits
from contract.amqp import BROKER_ERRORS
from contract.topology import Topology

log = logging.getLogger(__name__)

_TRANSIENT = Basic.Properties(delivery_mode=1, content_type="application/json")


class CommitNotices:
    def __init__(self, channel: AbstractRobustChannel, exchange: str) -> None:
        self._channel = channel
        self._exchange = exchange
        self._underlay: AbstractChannel | None = None
        self._failing = False

    @classmethod
    async def open(cls, connection: AbstractRobustConnection, topology: Topology) -> CommitNotices:
        channel = await connection.channel(publisher_confirms=False)
        if not isinstance(channel, AbstractRobustChannel):
            raise TypeError("a robust connection gives robust channels")
        name = commits.exchange_name(topology)
        # Declared through aio-pika, so the robust channel declares it again on every reopen.
        await channel.declare_exchange(name, ExchangeType.FANOUT, durable=True)
        notices = cls(channel, name)
        channel.reopen_callbacks.add(notices._on_reopen)
        await notices._on_reopen(None)
        return notices

    async def _on_reopen(self, _: object) -> None:
        self._underlay = await self._channel.get_underlay_channel()

    async def committed(self, receipts: list[str], stored: int) -> None:
        """Tell every api that a batch committed; never raises, never waits for a reconnect."""
        underlay = self._underlay
        if underlay is None or underlay.is_closed:
            return  # reconnecting: the apis re-read the store for what they wait for
        try:
            await underlay.basic_publish(
                commits.encode(receipts, stored), exchange=self._exchange, properties=_TRANSIENT
            )
        except BROKER_ERRORS as exc:
            if not self._failing:
                log.warning("commit notice not sent error=%s; apis fall back to reading the store", exc)
            self._failing = True
        else:
            self._failing = False

    async def close(self) -> None:
        self._channel.reopen_callbacks.discard(self._on_reopen)
        try:
            await self._channel.close()
        except BROKER_ERRORS as exc:
            log.debug("notices channel not closed cleanly error=%s", type(exc).__name__)
