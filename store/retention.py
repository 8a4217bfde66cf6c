"""Retention, backend-neutral: how long events and their keys are kept, what expired, what a sweep removed
and what the store holds now. The backends' sweeps are `store/sqlite/retention.py` and
`store/postgres/retention.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from store.clock import utc_text


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the store keeps events (`RETENTION`) and their dedup keys (`KEY_RETENTION`); None: forever.

    The store records the one in force (the last consumer to start sets it): reads and sweeps both take it
    from there, so an api or a second consumer started with other settings cannot disagree with them.
    """

    events: timedelta | None = None
    keys: timedelta | None = None

    def event_cutoff(self, now: datetime | None = None) -> str | None:
        """Events received before this moment (as `received_at` is stored) are expired."""
        return None if self.events is None else utc_text((now or datetime.now(UTC)) - self.events)

    def key_cutoff(self, now: datetime | None = None) -> str | None:
        """Keys received before this moment are forgotten: their event may be stored again."""
        return None if self.keys is None else utc_text((now or datetime.now(UTC)) - self.keys)

    def as_state(self) -> dict[str, str]:
        """As the store records it (consumer_state rows); "0" keeps forever."""
        return {
            "retention_seconds": _seconds_text(self.events),
            "key_retention_seconds": _seconds_text(self.keys),
        }

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Retention:
        return cls(_duration(state.get("retention_seconds")), _duration(state.get("key_retention_seconds")))

    def describe(self) -> str:
        return f"retention={_seconds_text(self.events)}s key_retention={_seconds_text(self.keys)}s"


KEEP_ALL = Retention()


def _seconds_text(span: timedelta | None) -> str:
    return "0" if span is None else f"{span.total_seconds():g}"


def _duration(text: str | None) -> timedelta | None:
    seconds = float(text) if text else 0.0
    return timedelta(seconds=seconds) if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class Expired:
    """A key whose event has expired: GET by key answers 410 with these (the store's clock; the moment
    received is kept to the millisecond in the key)."""

    received_at: str
    expired_at: str


def expires_at(received_at: str, retention: Retention) -> str:
    """When an event received at `received_at` expires (or expired) under `retention`."""
    if retention.events is None:
        return received_at  # expired under an earlier, shorter retention; swept before this one was set
    return utc_text(datetime.fromisoformat(received_at) + retention.events)


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep removed, in how many transactions, and the longest one (seconds)."""

    events: int = 0
    keys: int = 0
    transactions: int = 0
    longest: float = 0.0
    skipped: str | None = None  # why nothing was done (another consumer sweeping, nothing to keep)
    tidied: tuple[str, ...] = ()  # the tables vacuumed or analyzed after it (PostgreSQL)


@dataclass(frozen=True, slots=True)
class Holdings:
    """What the store holds now, beside the lifetime counters: /stats and /metrics show it."""

    stored_events: int
    expired_events: int  # unique_processed - stored_events: swept, or expired and not swept yet
    oldest_received_at: str | None
    size_bytes: int | None
    retention: Retention
