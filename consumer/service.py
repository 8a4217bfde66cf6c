"""The consumer service: consume, batch, commit once per batch, then settle; wait out store errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from consumer.batcher import Inbox
from consumer.faults import Faults
from consumer.handler import Decoded, decode_batch, receipt_of, settle
from consumer.settings import ConsumerSettings
from consumer.status import StatusFile
from consumer.storage import Storage
from contract import amqp
from contract.event import Limits
from contract.topology import declare
from store import BatchResult

log = logging.getLogger(__name__)

# How long shutdown waits on the broker (consumer cancel, channel close) before giving up on it.
SHUTDOWN_BROKER_TIMEOUT = 5.0


@dataclass
class Summary:
    totals: BatchResult = field(default_factory=BatchResult)
    messages: int = 0
    batches: int = 0
    unsettled: int = 0
    commit_failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        t = self.totals
        return (
            f"messages={self.messages} batches={self.batches} received={t.received} "
            f"unique_processed={t.unique_processed} duplicate_dropped={t.duplicate_dropped} "
            f"invalid={t.invalid} conflicts={t.conflicts} unsettled={self.unsettled} "
            f"commit_failures={self.commit_failures} elapsed={time.monotonic() - self.started:.1f}s"
        )


async def run(settings: ConsumerSettings, stop: asyncio.Event, faults: Faults | None = None) -> Summary:
    """Consume until `stop` is set; returns the run's summary. Store and broker outages are waited out."""
    faults = faults or Faults()
    summary = Summary()
    status = StatusFile(settings.db_path)
    status.set("starting")
    storage = Storage(settings, status, faults)
    try:
        if await storage.start(stop, summary):
            async with _connect(settings, stop) as connection:
                if connection is not None:
                    await _consume(connection, storage, settings, stop, summary, faults)
    finally:
        await storage.close()
        status.set("stopped", summary.line())
    log.info("consumer stopped %s", summary.line())
    return summary


@asynccontextmanager
async def _connect(
    settings: ConsumerSettings, stop: asyncio.Event
) -> AsyncIterator[AbstractRobustConnection | None]:
    """A robust connection to one of the broker's nodes; the first connect is retried until `stop`, so the
    consumer may start before the broker, and the connection fails over between the nodes after that."""
    connection = await amqp.connect(
        settings.amqp_urls(),
        name="eventagg-consumer",
        reconnect_interval=settings.reconnect_interval,
        stop=stop,
    )
    if connection is None:
        yield None
        return
    async with connection:
        yield connection


async def _consume(
    connection: AbstractRobustConnection,
    storage: Storage,
    settings: ConsumerSettings,
    stop: asyncio.Event,
    summary: Summary,
    faults: Faults,
) -> None:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=settings.effective_prefetch())
    declared = await declare(channel, settings.topology())
    inbox = Inbox()
    tag = await declared.queue.consume(inbox.put, no_ack=False)
    log.info(
        "consuming queue=%s prefetch=%d batch_size=%d batch_wait=%.3fs",
        settings.amqp_queue,
        settings.effective_prefetch(),
        settings.batch_size,
        settings.batch_wait,
    )
    limits = settings.limits()
    while not stop.is_set():
        messages = await inbox.next_batch(settings.batch_size, settings.batch_wait, stop)
        if messages:
            await _process(messages, storage, stop, summary, limits, faults)
    # Stop taking deliveries first, then finish what already arrived, so nothing is left half-done.
    try:
        # Bounded: while the broker is down a robust channel would wait for the reconnect forever.
        async with asyncio.timeout(SHUTDOWN_BROKER_TIMEOUT):
            await declared.queue.cancel(tag)
    except Exception as exc:  # the channel may already be gone; what is unacked returns to the queue anyway
        log.warning("could not cancel the consumer error=%s", type(exc).__name__)
    remaining = inbox.drain()
    for start in range(0, len(remaining), settings.batch_size):
        await _process(remaining[start : start + settings.batch_size], storage, stop, summary, limits, faults)
    try:
        async with asyncio.timeout(SHUTDOWN_BROKER_TIMEOUT):
            await channel.close()
    except Exception as exc:
        log.warning("could not close the channel cleanly error=%s", type(exc).__name__)


async def _process(
    messages: list[AbstractIncomingMessage],
    storage: Storage,
    stop: asyncio.Event,
    summary: Summary,
    limits: Limits,
    faults: Faults,
) -> None:
    batch: list[Decoded] = decode_batch(messages, limits)
    payload = [item.events for item in batch]
    # A message published by POST /publish?wait=stored carries a receipt, recorded in the batch's commit.
    receipts = [receipt_of(item.message) for item in batch]
    result = await storage.apply_with_retry(payload, stop, summary, receipts if any(receipts) else None)
    if result is None:
        return  # stopping while the store is failing: nothing acked, the broker redelivers the batch
    summary.totals.add(result)
    summary.messages += len(messages)
    summary.batches += 1
    faults.after_commit(summary.batches)
    summary.unsettled += await settle(batch)
    log.debug(
        "batch committed messages=%d received=%d unique=%d",
        len(messages),
        result.received,
        result.unique_processed,
    )
