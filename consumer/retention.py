"""The consumer's sweeper: removes expired events and forgotten keys every RETENTION_SWEEP_INTERVAL, and on
PostgreSQL vacuums what the store turned over (store/postgres/upkeep.py)."""

from __future__ import annotations

import asyncio
import logging

from consumer.storage import Storage, sleep_unless
from store import StoreError

log = logging.getLogger(__name__)


async def sweep_periodically(storage: Storage, interval: float, stop: asyncio.Event) -> None:
    """Sweep now and then every `interval` seconds until `stop`. Reads never wait for a sweep (they skip
    expired events themselves), so a failed sweep is only retried at the next interval."""
    while not stop.is_set():
        try:
            done = await storage.sweep()
        except StoreError as exc:
            log.warning("retention sweep failed error=%s; next try in %.0fs", exc, interval)
        else:
            if done.events or done.keys:
                log.info(
                    "retention sweep removed events=%d keys=%d transactions=%d longest=%.1fms",
                    done.events,
                    done.keys,
                    done.transactions,
                    done.longest * 1000,
                )
            elif done.skipped:
                log.debug("retention sweep skipped: %s", done.skipped)
            if done.tidied:
                log.info("store upkeep vacuumed or analyzed tables=%s", ",".join(done.tidied))
        if await sleep_unless(stop, interval):
            return
