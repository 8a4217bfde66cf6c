"""Commit notices on PostgreSQL: `NOTIFY` in the batch's own transaction, `LISTEN` in each api.

Besides the notice a consumer publishes on the broker (contract/commits.py), its batch's transaction sends
the same notice with `pg_notify`, and PostgreSQL delivers it to every listening session when, and only when,
the transaction commits: no broker hop on a `?wait=stored` request's path, and never a notice before its
commit or after a rollback. Each api listens on one connection of its own (CommitListener), so any number of
consumers reach any number of apis.

Notices stay hints: a listening connection that is lost loses the notices of its gap (the broker's copy may
still bring them), and the api reads the store for what its requests wait for (api/stored.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from store.postgres.schema import connect

log = logging.getLogger(__name__)

CHANNEL = "eventagg_commits"
LISTENER_APPLICATION = "eventagg-api-notices"
# How often a quiet listening connection is checked (one `SELECT 1`): a connection the server or the network
# dropped without a word is found within this, plus CHECK_TIMEOUT.
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 2.0

NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


class CommitListener:
    """One api's `LISTEN` connection: `on_payload` for each notice, `on_live` when it comes up or goes."""

    def __init__(
        self,
        url: str,
        on_payload: Callable[[bytes], None],
        on_live: Callable[[bool], None],
        retry_interval: float,
    ) -> None:
        self._url = url
        self._on_payload = on_payload
        self._on_live = on_live
        self._retry = retry_interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-listener")

    async def _run(self) -> None:
        while True:
            conn: Any = None
            live = False
            try:
                conn = await connect(self._url, LISTENER_APPLICATION)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(CHANNEL, self._heard)
                live = True
                self._on_live(True)
                log.info("commit notices listening channel=%s", CHANNEL)
                while not lost.is_set():
                    with suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), CHECK_INTERVAL)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), CHECK_TIMEOUT)
            except Exception as exc:  # a StoreError from connect, or the connection's loss (DB_ERRORS)
                log.debug("commit notices: listening failed error=%r", exc)
            finally:
                if live:
                    self._on_live(False)
                    log.warning("commit notices from PostgreSQL lost; listening again in %.1fs", self._retry)
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self._retry)

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_payload(payload.encode())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


def _setter(event: asyncio.Event) -> Callable[..., None]:
    return lambda *_: event.set()


async def notify(conn: Any, notices: list[str]) -> None:
    """In a batch's transaction: sent at its commit, dropped by its rollback."""
    await conn.execute(NOTIFY, CHANNEL, notices)
