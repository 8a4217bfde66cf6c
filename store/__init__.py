"""The store both deployables use: `open_writer`/`open_reader` pick the backend from the settings' URL.

`DATABASE_URL=postgresql://...` (or `postgres://`) selects PostgreSQL and wins over `DB_PATH`; otherwise
the store is the SQLite file at `DB_PATH`. Imports only `contract/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from contract.config import redact
from store.base import (
    BatchResult,
    Durability,
    Filters,
    Message,
    Page,
    Reader,
    Row,
    Snapshot,
    StoreConfigError,
    StoreError,
    Writer,
    key_hash,
)
from store.clock import utc_now
from store.deadletters import DeadLetter, DeadLetterCounts, DeadLetterPage, Rejected
from store.retention import Expired, Holdings, Retention, SweepResult

__all__ = [
    "BatchResult",
    "DeadLetter",
    "DeadLetterCounts",
    "DeadLetterPage",
    "Durability",
    "Expired",
    "Filters",
    "Holdings",
    "Location",
    "Message",
    "Page",
    "Reader",
    "Rejected",
    "Retention",
    "Row",
    "Snapshot",
    "StoreConfigError",
    "StoreError",
    "StoreSettings",
    "SweepResult",
    "Writer",
    "commit_listener",
    "key_hash",
    "locate",
    "open_reader",
    "open_writer",
    "utc_now",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")


class StoreSettings(Protocol):
    @property
    def db_path(self) -> Path: ...

    @property
    def database_url(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Location:
    backend: str  # "sqlite" | "postgresql"
    db_path: Path
    url: str | None = None

    def describe(self) -> str:
        """Where the store is, for logs: the URL without its password, or the file."""
        return f"DATABASE_URL={redact(self.url)}" if self.url else f"DB_PATH={self.db_path}"


def locate(settings: StoreSettings) -> Location:
    """The backend the settings select; StoreConfigError (one line, naming DATABASE_URL) if unknown."""
    url = (settings.database_url or "").strip()
    if not url:
        return Location("sqlite", settings.db_path)
    scheme = urlsplit(url).scheme
    if scheme in POSTGRES_SCHEMES:
        return Location("postgresql", settings.db_path, url)
    raise StoreConfigError(
        f"DATABASE_URL must start with postgresql:// or postgres:// (unset it to use the SQLite file at "
        f"DB_PATH), got {redact(url)!r}"
    )


async def open_writer(settings: StoreSettings, before_commit: Callable[[], None] | None = None) -> Writer:
    """Open (and migrate) the store for the consumer. StoreError to retry, StoreConfigError to give up."""
    location = locate(settings)
    if location.url is not None:
        from store.postgres import PostgresWriter

        return await PostgresWriter.open(location.url, before_commit)
    from store.sqlite import SqliteWriter

    return await SqliteWriter.open(location.db_path, before_commit)


class CommitListener(Protocol):
    def start(self) -> None: ...

    async def close(self) -> None: ...


def commit_listener(
    settings: StoreSettings,
    on_payload: Callable[[bytes], None],
    on_live: Callable[[bool], None],
    retry_interval: float,
) -> CommitListener:
    """The api's listener for the commit notices the store's writers send themselves, besides the broker's:
    PostgreSQL's `NOTIFY` from the batch's transaction (store/postgres/notices.py), or on SQLite a datagram
    from the writer's thread (store/sqlite/notices.py)."""
    location = locate(settings)
    if location.url is not None:
        from store.postgres.notices import CommitListener as Listener

        return Listener(location.url, on_payload, on_live, retry_interval)
    from store.sqlite.notices import CommitSocket

    return CommitSocket(location.db_path, on_payload, on_live, retry_interval)


def open_reader(settings: StoreSettings) -> Reader:
    """The api's reader; it connects on first use, so the api starts before the store exists."""
    location = locate(settings)
    if location.url is not None:
        from store.postgres import PostgresReader

        return PostgresReader(location.url)
    from store.sqlite import SqliteReader

    return SqliteReader(location.db_path)
