"""The consumer's side of its status file (contract/status.py): written on state changes, never per batch."""

from __future__ import annotations

import logging
from pathlib import Path

from consumer.hooks import Hooks
from contract import status
from store import StoreError

log = logging.getLogger(__name__)


class StatusFile(Hooks):
    """`consuming` while the store takes commits and a subscription is open on the broker, `store_failing`
    while the store does not take commits, `connecting` while the broker link is down or being restored,
    `stopped` at the end; the detail says why.

    If the disk is full this write fails too; that is logged and the api still infers a stall from the queue.
    """

    __slots__ = ("_broker", "_current", "_db_path", "_store")

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._current: status.Status | None = None
        self._store: str | None = None
        # Not subscribed until the first subscription says so.
        self._broker: str | None = "connecting to the broker"

    def on_store_ok(self) -> None:
        self._store = None
        self._show()

    def on_store_error(self, error: StoreError, backoff: float) -> None:
        self._store = str(error)
        self._show()

    def broker(self, problem: str | None) -> None:
        """None once a subscription is open on the broker; otherwise why there is none."""
        self._broker = problem
        self._show()

    def _show(self) -> None:
        if self._store is not None:
            self.set("store_failing", self._store)
        elif self._broker is not None:
            self.set("connecting", self._broker)
        else:
            self.set("consuming")

    def set(self, state: status.State, detail: str | None = None) -> None:
        current = self._current
        if current is not None and current.state == state:
            if current.detail == detail:
                return
            # Still the same state: `since` keeps saying when it began, only the detail changes.
            new = status.Status(state, current.since, detail, current.pid)
        else:
            new = status.Status.now(state, detail)
        try:
            status.write(self._db_path, new)
        except OSError as exc:
            path = status.path_for(self._db_path)
            log.warning("could not write the consumer status file path=%s error=%s", path, exc)
            return
        self._current = new
