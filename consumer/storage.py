"""The consumer's hold on the store: opens the Writer, applies batches, waits out store errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from consumer.faults import Faults
from consumer.settings import ConsumerSettings
from consumer.status import StatusFile
from store import BatchResult, Message, StoreConfigError, StoreError, Writer, locate, open_writer, utc_now

if TYPE_CHECKING:
    from consumer.service import Summary

log = logging.getLogger(__name__)

T = TypeVar("T")


class Storage:
    """Owns the Writer: opened on first use (and again after a failed open), closed on stop.

    The backends do their blocking work off the event loop (aiosqlite's thread, asyncpg's socket), so the
    loop keeps receiving deliveries while a commit waits for its fsync.
    """

    def __init__(self, settings: ConsumerSettings, status: StatusFile, faults: Faults) -> None:
        self._settings = settings
        self._status = status
        self._faults = faults
        self._writer: Writer | None = None
        self.location = locate(settings)  # StoreConfigError here: an unknown DATABASE_URL scheme

    async def _open(self) -> Writer:
        if self._writer is None:
            hook = self._faults.before_commit if self._faults.commit_flag else None
            self._writer = await open_writer(self._settings, hook)
            log.info("store opened backend=%s %s", self._writer.backend, self.location.describe())
        return self._writer

    async def start(self, stop: asyncio.Event, summary: Summary) -> bool:
        """Open the store and record the start; False when stopped first. StoreConfigError is fatal."""

        async def record(writer: Writer) -> bool:
            await writer.record_start(utc_now())
            return True

        return await self._with_retry(record, stop, summary) is not None

    async def apply_with_retry(
        self,
        payload: list[Message],
        stop: asyncio.Event,
        summary: Summary,
        receipts: list[str | None] | None = None,
    ) -> BatchResult | None:
        """Apply one batch in one transaction, retried until it commits; None when stopped first.

        The batch stays in hand, unacked, meanwhile: requeueing it would count against the quorum queue's
        delivery limit, and dead-lettering a valid event because the disk is full is never acceptable.
        """

        async def apply(writer: Writer) -> BatchResult:
            return await writer.apply(payload, receipts)

        return await self._with_retry(apply, stop, summary)

    async def _with_retry(
        self, fn: Callable[[Writer], Awaitable[T]], stop: asyncio.Event, summary: Summary
    ) -> T | None:
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
                summary.commit_failures += 1
                self._status.set("store_failing", str(exc))
                log.warning(
                    "store unavailable, consumption paused attempt=%d error=%s; retrying in %.1fs",
                    attempt,
                    exc,
                    delay,
                )
            else:
                self._status.set("consuming")
                summary.backoff = 0.0
                return result
            summary.backoff = delay
            if await sleep_unless(stop, delay):
                log.error("stopping while the store is failing; the batch in hand is left for redelivery")
                return None
            delay = min(delay * 2, self._settings.retry_max)

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
