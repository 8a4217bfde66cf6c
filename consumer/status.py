"""The consumer's health as a small JSON file beside the store, which the api reads for GET /health."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from contract.schema import consumer_status_path

log = logging.getLogger(__name__)


class StatusFile:
    """Written on state changes only (not per batch), atomically by rename.

    It lives outside the store on purpose: when the store is failing the consumer cannot record that in it.
    If the disk is full this write fails too; that is logged and the api still infers a stall from the queue.
    """

    def __init__(self, db_path: Path) -> None:
        self._path = consumer_status_path(db_path)
        self._state: str | None = None

    def set(self, state: str, detail: str | None = None) -> None:
        if state == self._state and detail is None:
            return
        self._state = state
        record = {
            "state": state,
            "since": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "detail": detail,
            "pid": os.getpid(),
        }
        # One temporary file per process: consumers on PostgreSQL may share DB_PATH's directory, and with one
        # name the second rename finds the file the first one already moved.
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record))
            tmp.replace(self._path)
        except OSError as exc:
            log.warning("could not write the consumer status file path=%s error=%s", self._path, exc)
