"""The consumer's hold on the store: opens the Writer, applies batches, waits out store errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from consumer.hooks import Hooks
from consumer.settings import ConsumerSettings
from store import (
    BatchResult,
    Message,
    StoreConfigError,
    StoreError,
    SweepResult,
    Writer,
    locate,
    open_writer,
    utc_now,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class Storage:
    """Owns the Writer: opened on first use (and again after a failed open), closed on stop.

    The backends do their blocking work off the event loop (SQLite's own thread, asyncpg's socket), so the
    loop keeps receiving deliveries while a commit waits for its fsync. `hooks` hear of each failed store call
    and of the first one that works after them; `before_commit` runs inside every batch transaction (fault
    injection for the crash tests).
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        hooks: Hooks,
        before_commit: Callable[[], None] | None = None,
        in_sweep: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._hooks = hooks
        self._before_commit = before_commit
        self._in_sweep = in_sweep
        self._writer: Writer | None = None
        self._working = False  # the last store call worked
        self.location = locate(settings)  # StoreConfigError here: an unknown DATABASE_URL scheme

    async def _open(self) -> Writer:
        if self._writer is None:
            self._writer = await open_writer(self._settings, self._before_commit)
            log.info("store opened backend=%s %s", self._writer.backend, self.location.describe())
        return self._writer

    async def start(self, stop: asyncio.Event) -> bool:
        """Open the store and record the start; False when stopped first. StoreConfigError is fatal."""

        async def record(writer: Writer) -> bool:
            await writer.record_start(utc_now())
            wanted = self._settings.store_retention()
            before = await writer.record_retention(wanted)
            if before != wanted:
                # Several consumers share one store: the last one started sets it for every reader and
                # sweeper, so two started with different values do not expire events by two clocks.
                log.warning("store retention changed from %s to %s", before.describe(), wanted.describe())
            if await writer.record_search(self._settings.search) != self._settings.search:
                # As retention: the last consumer started sets it for every writer and reader.
                log.warning("store search index turned %s", "on" if self._settings.search else "off")
            return True

        return await self._with_retry(record, stop) is not None

    async def apply_with_retry(
        self,
        payload: list[Message],
        stop: asyncio.Event,
        receipts: list[str | None] | None = None,
    ) -> BatchResult | None:
        """Apply one batch in one transaction, retried until it commits; None when stopped first.

        The batch stays in hand, unacked, meanwhile: requeueing it would count against the quorum queue's
        delivery limit, and dead-lettering a valid event because the disk is full is never acceptable.
        """

        async def apply(writer: Writer) -> BatchResult:
            return await writer.apply(payload, receipts)

        return await self._with_retry(apply, stop)

    async def _with_retry(self, fn: Callable[[Writer], Awaitable[T]], stop: asyncio.Event) -> T | None:
        """Retry with capped exponential backoff until it succeeds or we are told to stop."""
        delay = self._settings.retry_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await fn(await self._open())
            except StoreConfigError:
                raise
            except StoreError as exc:
                self._working = False
                self._hooks.on_store_error(exc, delay)
                log.warning(
                    "store unavailable, consumption paused attempt=%d error=%s; retrying in %.1fs",
                    attempt,
                    exc,
                    delay,
                )
            else:
                if not self._working:  # once per recovery, not per batch
                    self._working = True
                    self._hooks.on_store_ok()
                return result
            if await sleep_unless(stop, delay):
                log.error("stopping while the store is failing; the batch in hand is left for redelivery")
                return None
            delay = min(delay * 2, self._settings.retry_max)

    async def sweep(self) -> SweepResult:
        """One sweep by the store's recorded retention; StoreError when the store fails (tried again at the
        next interval: nothing is lost by sweeping late, reads are exact without it)."""
        return await (await self._open()).sweep(self._in_sweep)

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until stop is set; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
