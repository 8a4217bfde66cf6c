"""The store interface both deployables use: BatchResult, the Writer and Reader protocols, their errors."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import Any, Literal, Protocol

from contract.event import Event, content_hash
from contract.schema import COUNTERS
from store.clock import utc_text
from store.deadletters import DeadLetterCounts, DeadLetterPage, Rejected
from store.retention import Expired, Holdings, Retention, SweepResult
from store.search import Search

Backend = Literal["sqlite", "postgresql"]

# A batch as the consumer hands it over: one entry per message; an invalid one is Rejected (counted once and
# kept as a dead letter) or None (counted once, nothing kept).
Message = list[Event] | Rejected | None


def rejected_in(messages: Sequence[Message]) -> list[Rejected]:
    return [m for m in messages if isinstance(m, Rejected)]


# An event row as both backends return it: seq, topic, event_id, timestamp, source, payload (JSON text as
# the consumer serialised it), received_at. The api splices the payload text in verbatim, so the JSON it
# answers is byte-identical whichever backend stored the row.
Row = tuple[int, str, str, str, str, str, str]
COLUMNS = "seq, topic, event_id, timestamp, source, payload, received_at"


class StoreError(Exception):
    """The store cannot be used right now (I/O error, full disk, locked, unreachable); worth retrying."""


class StoreConfigError(StoreError):
    """The store is misconfigured (bad URL, wrong password, no permission, second SQLite writer): fatal."""


@dataclass(slots=True)
class BatchResult:
    received: int = 0
    unique_processed: int = 0
    duplicate_dropped: int = 0
    invalid: int = 0
    conflicts: int = 0
    # Per topic, for the store's topics table (the dashboard's table); not part of a result's identity.
    topic_duplicates: Counter[str] = field(default_factory=Counter, compare=False, repr=False)
    topic_conflicts: Counter[str] = field(default_factory=Counter, compare=False, repr=False)
    # (receipt, new, duplicates) of each receipt row this commit inserted: the store's own figures, which the
    # consumer's commit notice carries to the waiting api. A receipt stored by an earlier commit (a
    # redelivered message) is not among them: its row keeps the first commit's figures.
    receipts: list[tuple[str, int, int]] = field(default_factory=list, compare=False, repr=False)
    # Redelivered invalid messages whose dead letter an earlier commit kept (store/deadletters.py
    # not_kept_yet): to be rejected again, but in no counter, `received` and `invalid` included.
    rejected_again: int = field(default=0, compare=False)

    def add(self, other: BatchResult) -> None:
        self.received += other.received
        self.unique_processed += other.unique_processed
        self.duplicate_dropped += other.duplicate_dropped
        self.invalid += other.invalid
        self.conflicts += other.conflicts
        self.rejected_again += other.rejected_again

    def known_again(self, again: int) -> None:
        """Take `again` rejected messages, counted by sort_batch, back out of the counters."""
        self.received -= again
        self.invalid -= again
        self.rejected_again += again

    def topic_deltas(self, stored: Counter[str]) -> list[tuple[str, int, int, int]]:
        """(topic, stored, duplicates, conflicts) for every topic the batch touched, sorted by topic
        (PostgreSQL writers lock topic rows in this order)."""
        topics = sorted(set(stored) | set(self.topic_duplicates))
        return [(t, stored[t], self.topic_duplicates[t], self.topic_conflicts[t]) for t in topics]

    def deltas(self) -> list[tuple[str, int]]:
        """The non-zero counter increments, always in COUNTERS order (PostgreSQL locks rows in this order)."""
        return [(name, getattr(self, name)) for name in COUNTERS if getattr(self, name)]


@dataclass(frozen=True, slots=True)
class Filters:
    """What GET /events narrows a page to besides the topic; `since`/`until` bound `received_at` (as
    `utc_text` writes it), `since` inclusive, `until` exclusive."""

    source: str | None = None
    since: str | None = None
    until: str | None = None
    search: Search | None = None  # q= and payload.<field>= (store/search.py)


NO_FILTERS = Filters()


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    next_after: int | None  # the seq to continue from (exclusive), when more rows follow


@dataclass(frozen=True, slots=True)
class Durability:
    backend: Backend
    durable: bool | None  # None until the writer has recorded its settings
    settings: dict[str, str] = field(default_factory=dict)
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    counters: dict[str, int]
    topic_counts: dict[str, int]  # in the order the topics were first stored
    consumer: dict[str, str]
    store: str  # "ok" | "missing"
    durability: Durability
    topic_duplicates: dict[str, int] = field(default_factory=dict)
    topic_conflicts: dict[str, int] = field(default_factory=dict)
    holdings: Holdings | None = None


def empty_snapshot(backend: Backend) -> Snapshot:
    return Snapshot(dict.fromkeys(COUNTERS, 0), {}, {}, "missing", Durability(backend, None))


class Writer(Protocol):
    backend: Backend

    async def record_start(self, started_at: str) -> None: ...

    async def record_retention(self, retention: Retention) -> Retention:
        """Make `retention` the store's; returns the one recorded before (KEEP_ALL on a new store)."""
        ...

    async def record_search(self, on: bool) -> bool:
        """Make SEARCH `on` (or off) the store's; returns what it was. Turned on, the events already stored
        are indexed before this returns; from then on every batch indexes its events."""
        ...

    async def sweep(self, before_commit: Callable[[], None] | None = None) -> SweepResult:
        """Remove expired events and forgotten keys by the store's recorded retention, in short
        transactions (each well under 50 ms), so batches carry on between them. `before_commit` runs inside
        each transaction that removes something (fault injection for the crash tests)."""
        ...

    async def apply(
        self, messages: Sequence[Message], receipts: Sequence[str | None] | None = None
    ) -> BatchResult:
        """Apply a batch in ONE transaction; raises StoreError with nothing applied. `receipts`, one per
        message (or None), records in the same transaction how many events each marked message stored."""
        ...

    async def durability(self) -> Durability: ...

    async def close(self) -> None: ...


class Reader(Protocol):
    backend: Backend

    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        """Events after seq `after` in store order, or before it newest first (`descending`). SearchOff when
        `filters` search a store whose SEARCH is off."""
        ...

    async def event_row(self, topic: str, event_id: str) -> Row | Expired | None:
        """The stored event; Expired when its key is known but the event expired; None when unknown."""
        ...

    async def snapshot(self) -> Snapshot: ...

    async def check(self) -> str:
        """'ok', 'missing' (not created yet), or raises StoreError when the store cannot be read."""
        ...

    async def durability(self) -> Durability: ...

    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """For each receipt found: (events its message stored, events of it already stored)."""
        ...

    async def dead_letters(self, limit: int, before: int | None) -> DeadLetterPage:
        """Newest first; `before` is the id of the last one of the previous page."""
        ...

    async def dead_letter_counts(self) -> DeadLetterCounts: ...

    async def close(self) -> None: ...


# How long a receipt is kept: a request waits for its receipts at most PUBLISH_TIMEOUT (300 s at most).
RECEIPT_TTL = timedelta(hours=1)


def receipt_rows(
    messages: Sequence[Message],
    receipts: Sequence[str | None] | None,
    batch: Sorted,
    inserted: set[tuple[str, str]],
) -> list[tuple[str, int, int]]:
    """(receipt, new, duplicates) for each marked message, in receipt order (the lock order on PostgreSQL).

    An event is new for exactly the message whose copy was inserted: the batch's first copy of its key
    (by identity) when that key was inserted. A receipt seen twice in a batch (a re-sent message) keeps
    its first message's figures, as the store keeps the first row.
    """
    if not receipts:
        return []
    rows: dict[str, tuple[str, int, int]] = {}
    for events, receipt in zip(messages, receipts, strict=True):
        if receipt is None or receipt in rows:
            continue
        events = events if isinstance(events, list) else []
        new = sum(1 for e in events if (e.topic, e.event_id) in inserted and batch.first[e.key()] is e)
        rows[receipt] = (receipt, new, len(events) - new)
    return [rows[r] for r in sorted(rows)]


def receipts_expired_before(now: datetime | None = None) -> str:
    return utc_text((now or datetime.now(UTC)) - RECEIPT_TTL)


# Expired receipts are deleted by a batch that records receipts at most this often, not by every one: on
# PostgreSQL each statement of a commit is one more round trip on the path of a waiting request.
RECEIPT_SWEEP_INTERVAL = 60.0


class ReceiptSweep:
    """When a writer's next receipt-recording batch should also delete the expired receipts."""

    def __init__(self, interval: float = RECEIPT_SWEEP_INTERVAL) -> None:
        self._interval = interval
        self._next = 0.0  # the first batch sweeps

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


@dataclass(slots=True)
class Sorted:
    """A batch split in Python before it touches the store: the first copy of each key, in arrival order,
    and every later copy of a key within the batch (each a duplicate of whatever ends up stored)."""

    first: dict[tuple[str, str], Event]
    repeats: list[Event]
    result: BatchResult


def sort_batch(messages: Sequence[Message]) -> Sorted:
    first: dict[tuple[str, str], Event] = {}
    repeats: list[Event] = []
    result = BatchResult()
    for events in messages:
        if events is None or isinstance(events, Rejected):
            result.invalid += 1
            result.received += 1
            continue
        for item in events:
            result.received += 1
            key = (item.topic, item.event_id)
            if key in first:
                repeats.append(item)
            else:
                first[key] = item
    return Sorted(first, repeats, result)


def conflicts_with(timestamp: str, source: str, payload: str, item: Event) -> bool:
    """Whether `item` differs in content from the stored copy (timestamp, source, payload JSON text)."""
    if timestamp == item.timestamp and source == item.source and payload == item.payload_json():
        return False  # a verbatim re-send, the common duplicate: no need to hash
    stored: Any = json.loads(payload)
    return bool(content_hash(timestamp, source, stored) != item.content_hash())


def key_hash(topic: str, event_id: str) -> bytes:
    """The dedup key as the key tables hold it: 128 bits of BLAKE2b over topic, NUL, event_id (a topic
    cannot contain NUL). Two keys share a hash with a chance of about n^2 / 2^129 among n keys."""
    return blake2b(f"{topic}\x00{event_id}".encode(), digest_size=16).digest()


# What a batch found already stored under a key: the stored copy's (timestamp, source, payload), or None
# when only the key is left (the event expired): a duplicate whose conflict cannot be seen.
StoredCopy = tuple[str, str, str] | None


def count_duplicates(
    sorted_batch: Sorted, stored: Mapping[tuple[str, str], StoredCopy], inserted: set[tuple[str, str]]
) -> None:
    """Count duplicates and conflicts: a first copy that was not inserted duplicates the stored row; a repeat
    duplicates the stored row, which is its batch's first copy when that one was inserted. Against an
    expired event (its copy is gone) a duplicate is never a conflict."""
    result = sorted_batch.result
    duplicates, conflicts = result.topic_duplicates, result.topic_conflicts
    for key, item in sorted_batch.first.items():
        if key in inserted:
            result.unique_processed += 1
            continue
        result.duplicate_dropped += 1
        duplicates[key[0]] += 1
        copy = stored[key]
        if copy is not None and conflicts_with(*copy, item):
            result.conflicts += 1
            conflicts[key[0]] += 1
    for item in sorted_batch.repeats:
        key = (item.topic, item.event_id)
        result.duplicate_dropped += 1
        duplicates[key[0]] += 1
        if key in inserted:
            original = sorted_batch.first[key]
            if original is not item and conflicts_with(
                original.timestamp, original.source, original.payload_json(), item
            ):
                result.conflicts += 1
                conflicts[key[0]] += 1
        else:
            copy = stored[key]
            if copy is not None and conflicts_with(*copy, item):
                result.conflicts += 1
                conflicts[key[0]] += 1
