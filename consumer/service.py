"""The consumer service: consume, batch, commit once per batch, then settle; wait out store errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from consumer.batcher import Inbox
from consumer.faults import Faults
from consumer.handler import Decoded, decode_batch, receipt_of, settle
from consumer.metrics import serve as serve_metrics
from consumer.settings import ConsumerSettings
from consumer.status import StatusFile
from consumer.storage import Storage
from consumer.subscription import Subscription
from contract import amqp
from contract.event import Limits
from contract.topology import declare
from store import BatchResult, StoreConfigError

log = logging.getLogger(__name__)

# How long shutdown waits on the broker (consumer cancel, channel close) before giving up on it.
SHUTDOWN_BROKER_TIMEOUT = 5.0
# A batch also closes at this many bytes of bodies. Two batches are in hand decoded at once (one committing,
# the next waiting), and 256 envelopes of 100 events are 25,600 events: draining 200,000 queued events in
# envelopes peaked at 150-170 MiB without this (102 MiB with one decoded batch). Single events never reach it.
BATCH_MAX_BYTES = 1 << 20


@dataclass
class Summary:
    totals: BatchResult = field(default_factory=BatchResult)
    messages: int = 0
    batches: int = 0
    unsettled: int = 0
    commit_failures: int = 0
    backoff: float = 0.0  # the current wait before retrying a failing store
    # Called once per committed batch with its message count and commit time (the metrics, when served).
    on_commit: Callable[[int, float], None] | None = None
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
    storage = Storage(settings, status, faults)
    refused = False
    try:
        # The store first: a second consumer on one SQLite file is refused by the store's lock before it
        # writes the running consumer's status file or takes its metrics port.
        if await storage.start(stop, summary):
            metrics = serve_metrics(settings.metrics_port, summary)
            if metrics is not None:
                summary.on_commit = metrics.batch_committed
            async with _connect(settings, stop) as connection:
                if connection is not None:
                    await _consume(connection, storage, settings, stop, summary, faults)
    except StoreConfigError:
        refused = True
        raise
    finally:
        await storage.close()
        if not refused:
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
    await declare(channel, settings.topology())
    inbox: Inbox[DeliveredMessage] = Inbox(_body_size, BATCH_MAX_BYTES)
    subscription = Subscription(channel, settings.amqp_queue, inbox.put_nowait)
    await subscription.start()
    log.info(
        "consuming queue=%s prefetch=%d batch_size=%d batch_wait=%.3fs",
        settings.amqp_queue,
        settings.effective_prefetch(),
        settings.batch_size,
        settings.batch_wait,
    )
    # `halt` ends the loop on the stop signal, or at once when a commit failed for good (StoreConfigError):
    # its task is not awaited until the next batch, which an idle queue might never bring.
    halt = asyncio.Event()
    pipeline = _Pipeline(storage, stop, summary, settings.limits(), faults, halt.set)
    mirror = asyncio.create_task(_set_when(stop, halt))
    try:
        while not halt.is_set():
            messages = await inbox.next_batch(settings.batch_size, settings.batch_wait, halt)
            if messages:
                await pipeline.submit(messages)
        await pipeline.finish()  # raises what the last commit failed with
        # Stop taking deliveries first, then finish what already arrived, so nothing is left half-done.
        try:
            # Bounded: while the broker is down the cancel would wait for the reconnect forever.
            async with asyncio.timeout(SHUTDOWN_BROKER_TIMEOUT):
                await subscription.cancel()
        except Exception as exc:  # the channel may already be gone; what is unacked returns to the queue
            log.warning("could not cancel the consumer error=%s", type(exc).__name__)
        remaining = inbox.drain()
        for start in range(0, len(remaining), settings.batch_size):
            await pipeline.submit(remaining[start : start + settings.batch_size])
    finally:
        mirror.cancel()
        await pipeline.finish()
    try:
        async with asyncio.timeout(SHUTDOWN_BROKER_TIMEOUT):
            await channel.close()
    except Exception as exc:
        log.warning("could not close the channel cleanly error=%s", type(exc).__name__)


def _body_size(message: DeliveredMessage) -> int:
    return len(message.body)


async def _set_when(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


class _Pipeline:
    """Commits batches one at a time, in arrival order, each in a task of its own that settles it with the
    broker the moment its commit lands; meanwhile the consume loop collects and decodes the next batch.

    At most one commit runs and at most one decoded batch waits for it. A batch is settled only after its
    own commit: the next batch's multiple-ack must never cover deliveries whose effect is not stored, which
    is also why nothing is committed any more once a batch had to be left unsettled for redelivery.
    """

    def __init__(
        self,
        storage: Storage,
        stop: asyncio.Event,
        summary: Summary,
        limits: Limits,
        faults: Faults,
        on_failure: Callable[[], None],
    ) -> None:
        self._storage = storage
        self._on_failure = on_failure
        self._stop = stop
        self._summary = summary
        self._limits = limits
        self._faults = faults
        self._committing: asyncio.Task[bool] | None = None
        self._abandoned = False

    async def submit(self, messages: list[DeliveredMessage]) -> None:
        """Decode `messages` while the commit in flight runs, wait for it, then start theirs."""
        batch = decode_batch(messages, self._limits)
        if not await self.finish():
            return
        self._committing = asyncio.create_task(self._process(batch))
        self._committing.add_done_callback(self._check)

    def _check(self, task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_failure()

    async def finish(self) -> bool:
        """Wait for the commit in flight; False once a batch was left for redelivery."""
        committing, self._committing = self._committing, None
        if committing is not None and not await committing:
            self._abandoned = True
        return not self._abandoned

    async def _process(self, batch: list[Decoded]) -> bool:
        summary = self._summary
        payload = [item.for_store() for item in batch]
        # A message published by POST /publish?wait=stored carries a receipt, recorded in the batch's commit.
        receipts = [receipt_of(item.message) for item in batch]
        started = time.perf_counter()
        result = await self._storage.apply_with_retry(
            payload, self._stop, summary, receipts if any(receipts) else None
        )
        if result is None:
            return False  # stopping while the store is failing: nothing acked, the broker redelivers it
        if summary.on_commit is not None:
            summary.on_commit(len(batch), time.perf_counter() - started)
        summary.totals.add(result)
        summary.messages += len(batch)
        summary.batches += 1
        self._faults.after_commit(summary.batches)
        summary.unsettled += await settle(batch)
        log.debug(
            "batch committed messages=%d received=%d unique=%d",
            len(batch),
            result.received,
            result.unique_processed,
        )
        return True
