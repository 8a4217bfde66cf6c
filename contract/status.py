"""The consumer's status file: where it lives, what it holds, how it is written and read.

The consumer writes it on state changes (consumer/status.py); the api reads it for GET /health and /stats,
and the consumer image's healthcheck reads it inside the container (consumer/healthcheck.py). It lives beside
the store, outside it on purpose: when the store is failing the consumer cannot record that in it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

# `connecting`: the store takes commits but no subscription is open on the broker (starting, a lost
# connection, or a channel restore that does not finish); the detail says why.
State = Literal["consuming", "connecting", "store_failing", "stopped"]
STATES: tuple[State, ...] = ("consuming", "connecting", "store_failing", "stopped")


class UnreadableStatus(ValueError):
    """No status file, or one this module did not write."""


@dataclass(frozen=True, slots=True)
class Status:
    state: State
    since: str  # when the consumer entered `state`: ISO 8601, UTC, with a `Z`
    detail: str | None
    pid: int

    @classmethod
    def now(cls, state: State, detail: str | None = None) -> Status:
        return cls(state, datetime.now(UTC).isoformat().replace("+00:00", "Z"), detail, os.getpid())

    def since_epoch(self) -> float:
        return datetime.fromisoformat(self.since.replace("Z", "+00:00")).timestamp()


def path_for(db_path: Path) -> Path:
    """The status file of the consumer whose store is at `db_path` (on PostgreSQL, DB_PATH still names it)."""
    return db_path.with_name(db_path.name + ".consumer.json")


def write(db_path: Path, status: Status) -> None:
    """Replace the file atomically by rename; OSError when the disk refuses (the caller logs it)."""
    path = path_for(db_path)
    # One temporary file per process: consumers on PostgreSQL may share DB_PATH's directory, and with one
    # name the second rename finds the file the first one already moved.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(asdict(status)))
    tmp.replace(path)


def read(db_path: Path) -> Status:
    """The last status written; UnreadableStatus saying why there is none."""
    path = path_for(db_path)
    try:
        record = json.loads(path.read_text())
        state, since, detail, pid = record["state"], record["since"], record.get("detail"), int(record["pid"])
        datetime.fromisoformat(since.replace("Z", "+00:00"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableStatus(f"no readable consumer status at {path}: {exc}") from exc
    if state not in STATES or not (detail is None or isinstance(detail, str)):
        raise UnreadableStatus(f"no readable consumer status at {path}: {record!r}")
    return Status(state, since, detail, pid)


def read_or_none(db_path: Path) -> Status | None:
    """The last status written, or None when there is none (not written yet) or it cannot be read."""
    try:
        return read(db_path)
    except UnreadableStatus:
        return None
