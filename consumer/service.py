"""The consumer service: consume, batch, commit once per batch, then settle; wait out store errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from broker import connection as amqp
from broker.subscription import Subscription
from consumer.batcher import Inbox
from consumer.faults import Faults
from consumer.handler import Decoded, decode_batch, receipt_of, settle
from consumer.hooks import Commit, Fanout, Hooks, Settlement
from consumer.metrics import ConsumerMetrics
from consumer.notices import CommitNotices
from consumer.retention import sweep_periodically
from consumer.settings import ConsumerSettings
from consumer.status import StatusFile
from consumer.storage import Storage
from contract.config import scrub
from contract.topology import declare
from store import BatchResult, StoreConfigError, StoreError

log = logging.getLogger(__name__)

# How long shutdown waits on the broker (consumer cancel, channel close) before giving up on it.
SHUTDOWN_BROKER_TIMEOUT = 5.0
# A batch also closes at this many bytes of bodies. Two batches are in hand decoded at once (one committing,
# the next waiting), and 256 envelopes of 100 events are 25,600 events: draining 200,000 queued events in
# envelopes peaked at 150-170 MiB without this (102 MiB with one decoded batch). Single events never reach it.
BATCH_MAX_BYTES = 1 << 20


@dataclass
class Summary(Hooks):
    """The run's tallies, logged in one line when it stops."""

    totals: BatchResult = field(default_factory=BatchResult)
    messages: int = 0
    batches: int = 0
    redelivered: int = 0
    unsettled: int = 0
    commit_failures: int = 0
    backoff: float = 0.0  # the current wait before retrying a failing store
    started: float = field(default_factory=time.monotonic)

    def on_store_ok(self) -> None:
        self.backoff = 0.0

    def on_store_error(self, error: StoreError, backoff: float) -> None:
        self.commit_failures += 1
        self.backoff = backoff

    def on_commit(self, commit: Commit) -> None:
        self.totals.add(commit.result)
        self.messages += commit.messages
        self.batches += 1
        self.redelivered += commit.redelivered

    def on_settle(self, settlement: Settlement) -> None:
        self.unsettled += settlement.unsettled

    def line(self) -> str:
        t = self.totals
        return (
            f"messages={self.messages} batches={self.batches} received={t.received} "
            f"unique_processed={t.unique_processed} duplicate_dropped={t.duplicate_dropped} "
            f"invalid={t.invalid} conflicts={t.conflicts} redelivered={self.redelivered} "
            f"unsettled={self.unsettled} commit_failures={self.commit_failures} "
            f"elapsed={time.monotonic() - self.started:.1f}s"
        )


async def run(settings: ConsumerSettings, stop: asyncio.Event, faults: Faults | None = None) -> Summary:
    """Consume until `stop` is set; returns the run's summary. Store and broker outages are waited out."""
    faults = faults or Faults()
    summary = Summary()
    status = StatusFile(settings.db_path)
    metrics = ConsumerMetrics() if settings.metrics_port else None
    watchers: list[Hooks] = [summary, status] if metrics is None else [summary, status, metrics]
    # The fault injection last: it may SIGKILL the process once the others have heard of the commit.
    hooks = Fanout(*watchers, faults)
    storage = Storage(settings, hooks, faults.store_hook(), faults.sweep_hook())
    refused = False
    try:
        # The store first: a second consumer on one SQLite file is refused by the store's lock before it
        # writes the running consumer's status file or takes its metrics port.
        if await storage.start(stop):
            if metrics is not None:
                metrics.serve(settings.metrics_port)
            sweeper = asyncio.create_task(
                sweep_periodically(storage, settings.retention_sweep_interval, stop), name="retention-sweeper"
            )
            try:
                async with _connect(settings, stop) as connection:
                    if connection is not None:
                        await _consume(connection, storage, settings, stop, hooks, status)
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
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
    hooks: Hooks,
    status: StatusFile,
) -> None:
    inbox: Inbox[DeliveredMessage] = Inbox(_body_size, BATCH_MAX_BYTES)
    availability = _Availability(connection, status, settings.restore_timeout)
    subscribed = await _subscribe(connection, settings, stop, inbox, availability.changed)
    if subscribed is None:
        return
    channel, subscription = subscribed
    notices = CommitNotices(settings.amqp_urls(), settings.topology(), settings.reconnect_interval)
    notices.start()
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
    pipeline = _Pipeline(storage, stop, hooks, notices, halt.set, inbox.wake)
    mirror = asyncio.create_task(_set_when(stop, halt))
    limits = settings.limits()

    def prepare(chunk: list[DeliveredMessage]) -> list[Decoded]:
        return decode_batch(chunk, limits)

    try:
        while not halt.is_set():
            batch = await inbox.next_batch(
                settings.batch_size, halt, pipeline.busy, prepare, settings.batch_wait
            )
            if batch:
                await pipeline.submit(batch, inbox.opened_at)
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
            chunk = prepare(remaining[start : start + settings.batch_size])
            await pipeline.submit(chunk, asyncio.get_running_loop().time())
    finally:
        mirror.cancel()
        availability.close()
        try:
            await pipeline.finish()
        finally:
            await notices.close()
    try:
        async with asyncio.timeout(SHUTDOWN_BROKER_TIMEOUT):
            await channel.close()
    except Exception as exc:
        log.warning("could not close the channel cleanly error=%s", type(exc).__name__)


async def _subscribe(
    connection: AbstractRobustConnection,
    settings: ConsumerSettings,
    stop: asyncio.Event,
    inbox: Inbox[DeliveredMessage],
    on_change: Callable[[str | None], None],
) -> tuple[AbstractChannel, Subscription] | None:
    """Open the channel, declare the topology and start consuming; None when stopped first.

    The connection can be lost in the middle of it (a node killed, a network cut): the robust connection
    then reconnects by itself, and the whole step is done again on a new channel, the failed one closed so
    that the reconnect does not restore it. Without this the consumer exited at the first such loss.
    """
    while not stop.is_set():
        channel: AbstractChannel | None = None
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=settings.effective_prefetch())
            await declare(channel, settings.topology())
            subscription = Subscription(channel, settings.amqp_queue, inbox.put_nowait, on_change)
            await subscription.start()
            return channel, subscription
        except Exception as exc:
            # The broker's errors, and whatever a call pending on a channel that the loss closed is failed
            # with (aiormq fails them with a bare Exception when its reader ended at a clean end of stream).
            if not (isinstance(exc, amqp.BROKER_ERRORS) or channel is None or channel.is_closed):
                raise
            log.warning(
                "subscribing failed error=%s: %s; again in %.1fs",
                type(exc).__name__,
                scrub(str(exc)),
                settings.reconnect_interval,
            )
            if channel is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(SHUTDOWN_BROKER_TIMEOUT):
                        await channel.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.reconnect_interval)
    return None


class RestoreTimeout(ConnectionError):
    """A reconnected channel was not restored in time; its connection is closed to move to the next node."""


class _Availability:
    """Whether the consumer can consume, said in its status file (`connecting` with the reason, until its
    subscription is open again), and a bound on a channel restore that never finishes.

    After a reconnect aio-pika restores the channel (qos, declarations, then this consumer's basic.consume)
    and waits for the broker's answer to each step with no deadline. On a node where the quorum queue has no
    majority of its members that answer never comes: the restore blocks, nothing is consumed, and nothing
    fails. So a subscription not back within RESTORE_TIMEOUT closes the connection with RestoreTimeout;
    the robust connection then moves to the next node of AMQP_URL and restores there, and this repeats,
    RESTORE_TIMEOUT apart, until a node can serve the queue.
    """

    def __init__(self, connection: AbstractRobustConnection, status: StatusFile, bound: float) -> None:
        self._connection = connection
        self._status = status
        self._bound = bound
        self._timer: asyncio.TimerHandle | None = None
        self._abort: asyncio.Task[None] | None = None
        self._overdue_said = False

    def changed(self, problem: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if problem is None:
            if self._overdue_said:
                log.warning("consuming again node=%s", _node(self._connection))
            self._overdue_said = False
            self._status.broker(None)
            return
        self._status.broker(f"not consuming: {problem}; reconnecting")
        self._arm()

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._bound, self._overdue)

    def _overdue(self) -> None:
        transport = getattr(self._connection, "transport", None)
        if transport is None or transport.connection.is_closed:
            self._arm()  # not connected at all: reconnecting, which broker.connection reports
            return
        node = _node(self._connection)
        reason = (
            f"the channel was not restored on node={node} within {self._bound:g}s (RESTORE_TIMEOUT); a "
            "quorum queue without a majority of its members answers nothing"
        )
        self._status.broker(f"not consuming: {reason}; trying the next node")
        if not self._overdue_said:  # once per outage: the next node may well block the same way
            log.warning("%s; trying the next node", reason)
            self._overdue_said = True
        self._abort = asyncio.ensure_future(transport.connection.close(RestoreTimeout(reason)))
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _node(connection: AbstractRobustConnection) -> str:
    return str(getattr(connection, "node", "?"))


def _body_size(message: DeliveredMessage) -> int:
    return len(message.body)


async def _set_when(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


class _Pipeline:
    """Commits batches one at a time, in arrival order, each in a task of its own that settles it with the
    broker the moment its commit lands; meanwhile the consume loop collects and decodes the next batch, and
    `on_idle` tells it when the commit ended, so that the next one starts at once (group commit).

    At most one commit runs and at most one decoded batch waits for it. A batch is settled only after its
    own commit, and after the batch before it was settled: the next batch's multiple-ack must never cover
    deliveries whose effect is not stored, nor an invalid one still to be rejected. That is also why nothing
    is committed any more once a batch had to be left unsettled for redelivery. The next commit need not
    wait for the acks, though: only for the commit before it.
    """

    def __init__(
        self,
        storage: Storage,
        stop: asyncio.Event,
        hooks: Hooks,
        notices: CommitNotices,
        on_failure: Callable[[], None],
        on_idle: Callable[[], None],
    ) -> None:
        self._storage = storage
        self._on_failure = on_failure
        self._on_idle = on_idle
        self._stop = stop
        self._hooks = hooks
        self._notices = notices
        self._committing: asyncio.Task[bool] | None = None  # the last batch: its commit, then its settling
        self._committed: asyncio.Future[bool] | None = None  # its commit alone: False when left unstored
        self._abandoned = False
        self._failure: BaseException | None = None  # the first batch that raised: finish() raises it
        self._commits = 0

    async def submit(self, batch: list[Decoded], opened_at: float) -> None:
        """Wait for the commit in flight, then start `batch`'s (decoded while that one ran); `opened_at`: the
        loop time its first delivery was in hand."""
        # Straight to the Basic.Deliver frame: aiormq's `redelivered` property costs 124 ns a message in its
        # isinstance checks, this 10 ns (256 deliveries: 32 us against 2.5 us). Only Deliver reaches here.
        redelivered = sum(1 for d in batch if d.message.delivery.redelivered)  # type: ignore[union-attr,misc]
        if self._committed is not None and not await self._committed:
            self._abandoned = True
        if self._abandoned:
            await self.finish()
            return
        committed = self._committed = asyncio.get_running_loop().create_future()
        committed.add_done_callback(lambda _: self._on_idle())
        previous = self._committing
        self._committing = asyncio.create_task(
            self._process(batch, redelivered, opened_at, previous, committed)
        )
        self._committing.add_done_callback(self._check)

    def busy(self) -> bool:
        """Whether a commit is in flight (its batch's acks may still be on their way: they do not count)."""
        return self._committed is not None and not self._committed.done()

    def _check(self, task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and (failure := task.exception()) is not None:
            # Kept for finish(): the next batch awaits this one only to order its acks, and an exception
            # it swallowed there would otherwise end the loop with nothing said and exit code 0.
            if self._failure is None:
                self._failure = failure
            self._on_failure()

    async def finish(self) -> bool:
        """Wait for the batches in flight to be committed and settled; False once one was left for
        redelivery. Raises what the first failed batch raised."""
        committing, self._committing = self._committing, None
        try:
            if committing is not None and not await committing:
                self._abandoned = True
        finally:
            failure, self._failure = self._failure, None
            if failure is not None:
                raise failure
        return not self._abandoned

    async def _process(
        self,
        batch: list[Decoded],
        redelivered: int,
        opened_at: float,
        previous: asyncio.Task[bool] | None,
        committed: asyncio.Future[bool],
    ) -> bool:
        waited = asyncio.get_running_loop().time() - opened_at
        payload = [item.for_store() for item in batch]
        # A message published by POST /publish?wait=stored carries a receipt, recorded in the batch's commit.
        receipts = [receipt_of(item.message) for item in batch]
        started = time.perf_counter()
        try:
            result = await self._storage.apply_with_retry(
                payload, self._stop, receipts if any(receipts) else None
            )
        except BaseException:
            committed.set_result(False)
            raise
        committed.set_result(result is not None)
        if result is None:
            return False  # stopping while the store is failing: nothing acked, the broker redelivers it
        seconds = time.perf_counter() - started
        if result.rejected_again:
            log.warning(
                "redelivered invalid messages=%d already kept as dead letters: rejected again, not counted",
                result.rejected_again,
            )
        # First, before the hooks and the acks: a request waiting on its receipts hears of the commit one
        # broker hop later, with the figures the commit wrote. For batches someone may wait on, and for every
        # batch that stored an event (an api's live tail reads it); notices sent while one is on its way go
        # out together, so a fast stream costs few.
        marked = [receipt for receipt in receipts if receipt is not None]
        if marked or result.unique_processed:
            self._notices.committed(marked, result.unique_processed, result.receipts)
        if marked:
            # Someone waits on this commit: let the notice go out on the wire first (one turn of the loop
            # for the notice's task to queue its frames, one for the connection's writer to send them) rather
            # than after the hooks and the acks, about 0.1-0.2 ms later.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        self._commits += 1
        self._hooks.on_commit(
            Commit(self._commits, len(batch), result, seconds, redelivered, _lag(batch[0].message), waited)
        )
        if previous is not None:
            # Its rejects and acks go first (it committed before this one started). What it raised after its
            # commit already halted the loop through _check; this batch is settled all the same.
            with suppress(Exception):
                await previous
        unsettled = await settle(batch)
        self._hooks.on_settle(_settlement(batch, result.invalid + result.rejected_again, unsettled))
        log.debug(
            "batch committed messages=%d received=%d unique=%d",
            len(batch),
            result.received,
            result.unique_processed,
        )
        return True


def _lag(first: DeliveredMessage) -> float | None:
    """Seconds from `first`'s publish (its AMQP timestamp, whole seconds) until now; None without one."""
    published = first.header.properties.timestamp  # pamqp decodes it as an aware datetime
    return None if published is None else time.time() - published.timestamp()


def _settlement(batch: list[Decoded], invalid: int, unsettled: int) -> Settlement:
    """How `batch` was settled; settle() only says how many deliveries it could not settle."""
    if not unsettled:
        # Each invalid delivery is one rejected message, counted `invalid` by the store's commit, or known
        # to it already (BatchResult.rejected_again).
        return Settlement(len(batch) - invalid, invalid, 0)
    # A channel closed under the batch (a reconnect): what was settled is what arrived on the channels still
    # open. Per delivery, but only on this rare path.
    live = [item for item in batch if not item.message.channel.is_closed]
    rejected = sum(1 for item in live if item.events is None)
    return Settlement(len(live) - rejected, rejected, unsettled)
