"""Commit notices on PostgreSQL: `NOTIFY` in the batch's own transaction, `LISTEN` in each api.

With the PostgreSQL store a consumer does not publish its commit notices (contract/commits.py) on the broker:
its batch's transaction sends them with `pg_notify`, and PostgreSQL delivers them to every listening session
when, and only when, the transaction commits. That takes the broker hop off a `?wait=stored` request's path,
and a notice can never arrive before its commit nor after a rollback. Each api replica listens on one
connection of its own (CommitListener), so any number of consumers reach any number of apis, as with the
broker's fanout exchange.

Notices stay hints, as on the broker: a listening connection that is lost loses the notices of its gap, and
the api then reads the store for what its requests wait for (api/stored.py). A payload is at most
PAYLOAD_LIMIT bytes (PostgreSQL refuses more than 8,000): a batch whose notice would be longer sends several.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from contract import commits
from store.postgres.schema import connect

log = logging.getLogger(__name__)

CHANNEL = "eventagg_commits"
PAYLOAD_LIMIT = 7_900
LISTENER_APPLICATION = "eventagg-api-notices"
# How often a quiet listening connection is checked (one `SELECT 1`): a connection the server or the network
# dropped without a word is found within this, plus CHECK_TIMEOUT.
CHECK_INTERVAL = 2.0
CHECK_TIMEOUT = 2.0
# A notice's fixed part, and a figure pair's most ("[n,d]" with two bigints), in bytes.
_FIXED = 64
_FIGURES = 48

NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


def payloads(receipts: Sequence[str], stored: int, figures: Sequence[tuple[str, int, int]]) -> list[str]:
    """The notices of one commit, each within PAYLOAD_LIMIT: the receipts in groups, the count of stored
    events in the first. `figures`: (receipt, new, duplicates) of the receipts the commit inserted."""
    if not receipts:
        return [commits.encode([], stored).decode()] if stored else []
    carried = {r: (n, d) for r, n, d in figures}
    groups: list[list[str]] = [[]]
    size = _FIXED
    for receipt in receipts:
        quoted = len(
            json.dumps(receipt).encode()
        )  # a receipt is at most 255 characters (consumer/handler.py)
        cost = quoted + 1 + (quoted + 1 + _FIGURES if receipt in carried else 0)
        if groups[-1] and size + cost > PAYLOAD_LIMIT:
            groups.append([])
            size = _FIXED
        groups[-1].append(receipt)
        size += cost
    return [
        commits.encode(
            group, stored if n == 0 else 0, ((r, *carried[r]) for r in group if r in carried)
        ).decode()
        for n, group in enumerate(groups)
    ]


class CommitListener:
    """One api's `LISTEN` connection: `on_payload` for each notice, `on_live` when it comes up or goes."""

    def __init__(
        self,
        url: str,
        on_payload: Callable[[str], None],
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
                    log.warning("commit notices lost; waiting requests read the store until they are back")
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self._retry)

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_payload(payload)

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
