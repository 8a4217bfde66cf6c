"""The PostgreSQL store's time partitions of `events`: their widths, the catalogue's view of them, creating
them ahead of the writers, and the migration that moved a store of schema 6 onto them.

`events` is partitioned by range on `received_at` (compared in the C collation, as it sorts as it reads), so
expired events leave by whole partitions (store/postgres/retention.py) instead of row-by-row deletes. There is
no default partition: a partition for `received_at` always exists before a batch inserts (`Coverage`), and an
insert that still finds none (a clock far behind the others) creates it and retries the batch, so no insert is
lost for lack of one. New partitions are attached (SHARE UPDATE EXCLUSIVE on `events`), never created with
`PARTITION OF` (ACCESS EXCLUSIVE), so neither batches nor reads wait for them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from store.base import key_hash
from store.clock import utc_text
from store.postgres.search import COLUMNS_DDL as SEARCH_COLUMNS_DDL
from store.retention import Retention

# Advisory lock of partition changes: creators read the catalogue and attach under it, so two consumers never
# attach overlapping ranges.
PARTITION_LOCK: Final = 0x65766167_00000003
PREFIX: Final = "events_p_"  # every partition's name; a store of schema 6's table is events_p_v6
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HORIZON: Final = 600_000_000  # ten minutes, in microseconds

# The columns of `events` as schema 7 made them ...
COLUMNS_DDL_V7: Final = """
    seq          bigint NOT NULL,
    topic        text NOT NULL,
    event_id     text NOT NULL,
    timestamp    text NOT NULL,
    source       text NOT NULL,
    payload      text NOT NULL,
    received_at  text NOT NULL,
    txid         xid8 NOT NULL DEFAULT pg_current_xact_id()
"""
# ... and of every partition created since schema 8 added the search columns (ATTACH needs them identical).
COLUMNS_DDL: Final = COLUMNS_DDL_V7 + SEARCH_COLUMNS_DDL


def width(retention: Retention) -> timedelta:
    """An eighth of the retention (at least a second unless that is over half of it, at most a day): the store
    holds about 1/8 more than the retention before a partition's events have all expired; a week when events
    are kept forever. Below half the retention, no partition holding expired events also holds `now`."""
    if retention.events is None:
        return timedelta(days=7)
    return min(max(retention.events / 8, timedelta(seconds=1)), retention.events / 2, timedelta(days=1))


def micros(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(microseconds=1)


def text_of(us: int) -> str:
    return utc_text(_EPOCH + timedelta(microseconds=us))


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lo: int | None  # microseconds since the epoch of its lower bound (inclusive); None: MINVALUE
    hi: int | None  # of its upper bound (exclusive); None: MAXVALUE
    pending: bool  # a DETACH CONCURRENTLY was interrupted (the sweep finalizes it)

    def holds(self, us: int) -> bool:
        return (self.lo is None or self.lo <= us) and (self.hi is None or us < self.hi)


_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")

LIST_PARTITIONS = """
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'events'::regclass
"""
# Tables of ours left detached (a sweep stopped between DETACH and DROP): their rows are expired and counted
# as expired until a sweep drops them.
LIST_DETACHED = r"""
    SELECT c.relname FROM pg_class AS c
    WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)
      AND c.relkind = 'r' AND c.relname LIKE 'events\_p\_%'
      AND NOT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = c.oid)
"""


def _bound(text: str) -> int | None:
    return None if text in ("MINVALUE", "MAXVALUE") else micros(text.strip("'"))


async def partitions(conn: Any) -> list[Partition]:
    """Every partition of `events` by lower bound (MINVALUE first)."""
    found = []
    for name, bound, pending in await conn.fetch(LIST_PARTITIONS):
        match = _BOUND.fullmatch(bound)
        if match is None:
            raise ValueError(f"unexpected bound of partition {name}: {bound}")
        found.append(Partition(str(name), _bound(match[1]), _bound(match[2]), bool(pending)))
    return sorted(found, key=lambda p: -(2**63) if p.lo is None else p.lo)


def missing(existing: list[Partition], step: int, start: int, end: int) -> list[tuple[int, int]]:
    """The ranges to create so that [start, end) is covered: cells of `step` on the epoch's grid, each
    clipped to the gaps between existing partitions (whose widths may come from an earlier retention)."""
    pieces: list[tuple[int, int]] = []
    cell = start // step * step
    while cell < end:
        lo, hi = cell, cell + step
        for p in existing:
            p_lo = -(2**63) if p.lo is None else p.lo
            p_hi = 2**63 if p.hi is None else p.hi
            if p_hi <= lo or p_lo >= hi:
                continue
            if p_lo <= lo:
                lo = max(lo, p_hi)
            else:
                hi = min(hi, p_lo)
            if lo >= hi:
                break
        if lo < hi:
            pieces.append((lo, hi))
        cell += step
    return pieces


async def recorded_retention(conn: Any) -> Retention:
    rows = await conn.fetch(
        "SELECT key, value FROM consumer_state WHERE key IN ('retention_seconds', 'key_retention_seconds')"
    )
    return Retention.from_state({str(r[0]): str(r[1]) for r in rows})


async def ensure(conn: Any, until: int, since: int | None = None, patient: bool = True) -> list[Partition]:
    """Create what is missing for [since (default: a horizon ago), until) in one short transaction; returns
    every partition. The width comes from the retention the store records. Not `patient`: give up (asyncpg's
    LockNotAvailableError) rather than wait more than a moment for another session's lock."""
    now = time_us()
    async with conn.transaction():
        if not patient:
            await conn.execute("SET LOCAL lock_timeout = '50ms'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        step = width(await recorded_retention(conn)) // timedelta(microseconds=1)
        existing = await partitions(conn)
        pieces = missing(existing, step, now - horizon(step) if since is None else since, until)
        for lo, hi in pieces:
            name = f"{PREFIX}{lo}"
            await conn.execute(f"CREATE TABLE {name} ({COLUMNS_DDL})")
            await conn.execute(
                f"ALTER TABLE events ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{text_of(lo)}') TO ('{text_of(hi)}')"
            )
        return await partitions(conn) if pieces else existing


def time_us() -> int:
    return time.time_ns() // 1000


class Coverage:
    """A writer's view of which `received_at` the partitions cover, so a batch needs no catalogue query:
    when its moment is not covered at least a width ahead, the writer creates partitions first."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []
        self.step = width(Retention()) // timedelta(microseconds=1)

    def holds(self, us: int) -> bool:
        return any(lo <= us < hi for lo, hi in self._ranges)

    def ahead(self, us: int) -> bool:
        """Whether `us` and a horizon after it are covered."""
        end = us
        for lo, hi in self._ranges:
            if lo <= end < hi:
                end = hi
        return end - us > horizon(self.step)

    def update(self, found: list[Partition], retention: Retention) -> None:
        self.step = width(retention) // timedelta(microseconds=1)
        self._ranges = [(-(2**63) if p.lo is None else p.lo, 2**63 if p.hi is None else p.hi) for p in found]

    def forget(self) -> None:
        self._ranges = []


def horizon(step: int) -> int:
    """How far ahead of `now` partitions are kept: a width, at most ten minutes (beyond the sweeps' default
    interval, so the sweeps create them and the writers need not; never weeks of empty partitions that a
    shorter retention recorded later would have to wait out)."""
    return min(step, _HORIZON)


async def cover_until(conn: Any, retention: Retention, patient: bool = True) -> list[Partition]:
    """Partitions from a width ago to two horizons ahead; returns every partition."""
    step = width(retention) // timedelta(microseconds=1)
    return await ensure(conn, time_us() + 2 * horizon(step), patient=patient)


async def cover(conn: Any, coverage: Coverage, moment: int | None = None) -> None:
    """As cover_until, and the writer's view of them. When `moment` (a batch's) is covered already, this only
    extends ahead: it gives up at once rather than wait behind a sweep's detach, and the batch goes on."""
    retention = await recorded_retention(conn)
    patient = moment is None or not coverage.holds(moment)
    try:
        coverage.update(await cover_until(conn, retention, patient), retention)
    except asyncpg.LockNotAvailableError:
        if patient:
            raise


# --- migration from schema 6 (one table with UNIQUE (topic, event_id)) ------------------------------------

_V7_BEFORE = f"""
    ALTER TABLE events RENAME TO {PREFIX}v6;
    ALTER INDEX events_pkey RENAME TO {PREFIX}v6_pkey;
    ALTER TABLE {PREFIX}v6 RENAME CONSTRAINT events_topic_event_id_key TO {PREFIX}v6_key;
    ALTER INDEX events_by_topic RENAME TO {PREFIX}v6_by_topic;
    ALTER INDEX events_by_source RENAME TO {PREFIX}v6_by_source;
    ALTER INDEX events_by_received_at RENAME TO {PREFIX}v6_by_received_at;
    CREATE TABLE events ({COLUMNS_DDL_V7}) PARTITION BY RANGE (received_at COLLATE "C");
    CREATE INDEX events_by_seq ON events (seq);
    CREATE INDEX events_by_topic ON events (topic, seq);
    CREATE INDEX events_by_source ON events (source, seq);
    CREATE INDEX events_by_received_at ON events ((received_at COLLATE "C"), seq);
    CREATE TABLE event_keys (key_hash bytea NOT NULL, seq bigint NOT NULL, received_at timestamptz NOT NULL);
    CREATE TABLE sweep_totals (events bigint NOT NULL, keys bigint NOT NULL);
    INSERT INTO sweep_totals (events, keys) VALUES (0, 0);
"""
_V7_AFTER = """
    ALTER TABLE event_keys ADD PRIMARY KEY (key_hash);
    CREATE INDEX event_keys_by_time ON event_keys (received_at);
"""


async def migrate_to_partitions(conn: Any) -> None:
    """Schema 7, inside the migration's transaction: the table of schema 6 becomes the partition below the
    migration's moment, as it is (attached, its rows validated in one scan, not copied); the dedup keys move
    to the compact key table (hashed here: the same key_hash as the writers')."""
    await conn.execute(_V7_BEFORE)
    legacy = f"{PREFIX}v6"
    newest = await conn.fetchval(f'SELECT max(received_at COLLATE "C") FROM {legacy}')
    if newest is None:
        await conn.execute(f"DROP TABLE {legacy}")
    else:
        # Up to its newest event: the partitions after it are created as any others, so once a retention is
        # set, the old table leaves whole when its newest event expires.
        bound = micros(str(newest)) + 1
        await conn.execute(
            f"ALTER TABLE events ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO ('{text_of(bound)}')"
        )
        # The key table takes over dedup: the unique constraint and the seq key are not needed any more.
        await conn.execute(
            f"ALTER TABLE {legacy} DROP CONSTRAINT {legacy}_key, DROP CONSTRAINT {legacy}_pkey"
        )
        cursor = conn.cursor(f"SELECT topic, event_id, seq, received_at FROM {legacy}", prefetch=50_000)
        chunk: list[tuple[bytes, int, datetime]] = []
        async for topic, event_id, seq, received_at in cursor:
            chunk.append((key_hash(topic, event_id), seq, datetime.fromisoformat(received_at)))
            if len(chunk) == 50_000:
                await conn.copy_records_to_table("event_keys", records=chunk)
                chunk = []
        if chunk:
            await conn.copy_records_to_table("event_keys", records=chunk)
    await conn.execute(_V7_AFTER)
