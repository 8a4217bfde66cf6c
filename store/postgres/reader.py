"""The PostgreSQL reader: the api's small pool, pages behind the writers' watermark, snapshots."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

from contract.schema import COUNTERS
from store.base import (
    COLUMNS,
    NO_FILTERS,
    Backend,
    Durability,
    Filters,
    Page,
    Row,
    Snapshot,
    StoreError,
    empty_snapshot,
    key_hash,
)
from store.clock import utc_text
from store.deadletters import DEAD_LETTER_COLUMNS, DeadLetterCounts, DeadLetterPage, dead_letter
from store.postgres import search
from store.postgres.retention import Swept, holdings
from store.postgres.schema import (
    BACKEND,
    DB_ERRORS,
    PLANNING,
    WRITER_APPLICATION,
    connect_error,
    durability_of,
    where,
)
from store.retention import Expired, Retention
from store.search import SearchOff

log = logging.getLogger(__name__)

_SUMMED_COUNTERS = "SELECT name, SUM(value)::bigint FROM counter_slots GROUP BY name"
_SUMMED_TOPICS = """
    SELECT topic, SUM(c.count)::bigint, SUM(c.duplicates)::bigint, SUM(c.conflicts)::bigint
    FROM topics JOIN topic_counts AS c USING (topic)
    GROUP BY topic, first_seq ORDER BY first_seq, topic
"""
# The consumer state, with the newest commit time of any slot as `last_commit_at`.
_CONSUMER_STATE = """
    SELECT key, value FROM consumer_state
    UNION ALL
    SELECT 'last_commit_at', MAX(last_commit_at) FROM writer_slots HAVING MAX(last_commit_at) IS NOT NULL
"""
_SAFE = "txid < $4::text::xid8"
# The writers still running, as seen before the page's own snapshot is taken: the next transaction id to
# be assigned and the 32-bit ids of this database's consumer sessions that hold one.
# With them, the retention the store records.
_WRITERS = """
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text, array(
        SELECT backend_xid::text FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = $1 AND backend_xid IS NOT NULL
    ), (SELECT value FROM consumer_state WHERE key = 'retention_seconds'),
    (SELECT value FROM consumer_state WHERE key = 'search')
"""
# A key's seq and moment (the newest bucket's: a key forgotten and stored again is in two), and the recorded
# retention, for GET by key.
_KEY = """
    SELECT seq, received_at, (SELECT value FROM consumer_state WHERE key = 'retention_seconds'),
        (SELECT value FROM consumer_state WHERE key = 'key_retention_seconds')
    FROM event_keys WHERE key_hash = $1 ORDER BY bucket DESC LIMIT 1
"""
_BY_SEQ = f"""
    SELECT {COLUMNS} FROM events
    WHERE (received_at COLLATE "C") >= $1 AND (received_at COLLATE "C") < $2 AND seq = $3
"""
_SECOND = timedelta(seconds=1)
# A sweep that drops a partition while a snapshot counts it: the snapshot is read again, after the drop.
_SNAPSHOT_ATTEMPTS = 3
_CONSISTENT = "repeatable_read"


def full_xid(near: int, xid: int) -> int:
    """The 64-bit id of the 32-bit `xid` that pg_stat_activity shows, taking the epoch nearest `near`.

    `near` is the snapshot's xmax: one past the newest *finished* transaction, so a writer still running
    may hold an id at or above it, in the same epoch. (Taking every such id for one of the previous epoch
    made the watermark negative, which xid8 reads as a huge number: a page then stepped past a running
    writer's seqs, and its events never showed on a keyset page or in the live tail.)
    """
    full = (near >> 32 << 32) | xid
    if full > near + (1 << 31):
        full -= 1 << 32
    elif full < near - (1 << 31):
        full += 1 << 32
    return full


async def _keep_session(conn: Any) -> None:
    """The pool's reset of a connection it takes back: nothing beyond the rollback of an open transaction,
    which asyncpg always does. A reader sets no session state (no LISTEN, no advisory lock, no SET, no
    cursor held), so asyncpg's default reset would only cost every read a second round trip to the server
    (`RESET ALL` and the rest), on the path of every page, /stats and `?wait=stored` receipt read."""


# How the consumers' sessions name themselves, so the readers can find the transactions still running.
class PostgresReader:
    """A small connection pool, created on first use so the api starts before the database answers."""

    backend: Backend = BACKEND

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    try:
                        self._pool = await asyncpg.create_pool(
                            self._url,
                            min_size=1,
                            max_size=4,
                            timeout=10,
                            server_settings=PLANNING,
                            reset=_keep_session,
                        )
                    except DB_ERRORS as exc:
                        raise connect_error(self._url, exc) from exc
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[Any] | None:
        """Rows, or None while the consumer has not created the tables yet."""
        pool = await self._get_pool()
        try:
            return cast(list[Any], await pool.fetch(sql, *args))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            return None
        except DB_ERRORS as exc:
            raise connect_error(self._url, exc) from exc

    async def _watermark(self) -> tuple[str, str | None, bool] | None:
        """A transaction id below which every writer has finished: the oldest consumer transaction still
        running, or the next id to be assigned when none runs.

        Read in its own statement before the page's: a writer that gets its id after this moment gets a
        larger one (and, through eventagg_allocate, larger seqs than every row below the watermark), and one
        that finished before it is visible to the page's later snapshot. Only this database's consumer
        sessions count, so unrelated long transactions on the server do not hold pages back. With it, the
        moment before which events are expired (None: kept forever) by the retention the store records, and
        whether its SEARCH is on.
        """
        rows = await self._fetch(_WRITERS, WRITER_APPLICATION)
        if rows is None:
            return None  # no store yet
        if not rows:
            raise StoreError(f"{where(self._url)}: no answer from pg_stat_activity")
        next_id = int(rows[0][0])
        bound = next_id
        for text in rows[0][1]:
            bound = min(bound, full_xid(next_id, int(text)))
        retention = Retention.from_state({"retention_seconds": rows[0][2] or "0"})
        return str(bound), retention.event_cutoff(), search.enabled(rows[0][3])

    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        marks = await self._watermark()
        if marks is None:
            return Page([], None)
        watermark, cutoff, searchable = marks
        if filters.search and not searchable:
            raise SearchOff()
        sql, args = page_query(topic, limit, after, descending, filters, watermark, cutoff)
        rows = await self._fetch(sql, *args)
        found = [cast(Row, tuple(r)) for r in rows or []]
        more = len(found) > limit
        found = found[:limit]
        return Page(found, found[-1][0] if more else None)

    async def event_row(self, topic: str, event_id: str) -> Row | Expired | None:
        keys = await self._fetch(_KEY, key_hash(topic, event_id))
        if not keys:
            return None
        seq, moment, events, kept = keys[0]
        retention = Retention.from_state(
            {"retention_seconds": events or "0", "key_retention_seconds": kept or "0"}
        )
        now = datetime.now(UTC)
        if retention.keys is not None and moment < now - retention.keys:
            return None  # forgotten: a re-send would be stored again
        if retention.events is not None and moment < now - retention.events:
            return Expired(utc_text(moment), utc_text(moment + retention.events))
        # A moment written without microseconds sorts after those with: look a second beyond it.
        rows = await self._fetch(_BY_SEQ, utc_text(moment), utc_text(moment + _SECOND), seq)
        if rows:
            return cast(Row, tuple(rows[0]))
        return None

    async def snapshot(self) -> Snapshot:
        """Counters and per-topic counts in one REPEATABLE READ transaction, so they agree with each other."""
        pool = await self._get_pool()
        for attempt in range(1, _SNAPSHOT_ATTEMPTS + 1):
            try:
                async with pool.acquire() as conn, conn.transaction(isolation=_CONSISTENT, readonly=True):
                    counters = await conn.fetch(_SUMMED_COUNTERS)
                    topics = await conn.fetch(_SUMMED_TOPICS)
                    consumer = await conn.fetch(_CONSUMER_STATE)
                    state = {str(r[0]): str(r[1]) for r in consumer}
                    values = {str(r[0]): int(r[1]) for r in counters}
                    retention = Retention.from_state(state)
                    held = await holdings(conn, retention, values.get("unique_processed", 0))
                break
            except Swept:
                if attempt == _SNAPSHOT_ATTEMPTS:
                    raise StoreError(f"{where(self._url)}: partitions dropped under every count") from None
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
                return empty_snapshot(BACKEND)
            except DB_ERRORS as exc:
                raise connect_error(self._url, exc) from exc
        recorded = {str(k): state[k] for k in ("synchronous_commit", "fsync") if k in state}
        return Snapshot(
            {name: values.get(name, 0) for name in COUNTERS},
            {str(r[0]): int(r[1]) for r in topics},
            state,
            "ok",
            durability_of(recorded),
            {str(r[0]): int(r[2]) for r in topics},
            {str(r[0]): int(r[3]) for r in topics},
            held,
        )

    async def receipts(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not ids:
            return {}
        rows = await self._fetch(
            "SELECT receipt, new, duplicates FROM receipts WHERE receipt = ANY($1::text[])", list(ids)
        )
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows or []}

    async def check(self) -> str:
        rows = await self._fetch("SELECT value FROM counter_slots LIMIT 1")
        return "missing" if rows is None else "ok"

    async def durability(self) -> Durability:
        return (await self.snapshot()).durability

    async def dead_letters(self, limit: int, before: int | None) -> DeadLetterPage:
        where = "WHERE id < $2" if before is not None else ""
        args: list[Any] = [limit + 1] + ([before] if before is not None else [])
        rows = await self._fetch(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters {where} ORDER BY id DESC LIMIT $1", *args
        )
        letters = [dead_letter(tuple(row)) for row in rows or []]
        more = len(letters) > limit
        letters = letters[:limit]
        return DeadLetterPage(letters, letters[-1].id if more else None)

    async def dead_letter_counts(self) -> DeadLetterCounts:
        counts = await self._fetch("SELECT kind, count FROM dead_letter_counts ORDER BY kind")
        dropped = await self._fetch("SELECT dropped FROM dead_letter_totals")
        by_kind = {str(r[0]): int(r[1]) for r in counts or []}
        gone = int(dropped[0][0]) if dropped else 0
        return DeadLetterCounts(by_kind, sum(by_kind.values()) - gone, gone)


def page_query(
    topic: str | None,
    limit: int,
    after: int,
    descending: bool,
    filters: Filters,
    watermark: str,
    cutoff: str | None,
) -> tuple[str, list[Any]]:
    """One page of events as SQL, behind the writers' `watermark`, expired events (before `cutoff`) left
    out; EXPLAIN in the store suite."""
    where = f"seq {'<' if descending else '>'} $1 AND {_SAFE}"
    args: list[Any] = [after, limit + 1, topic, watermark]
    if topic is not None:
        where += " AND topic = $3::text"
    else:
        where += " AND $3::text IS NULL"
    # Several consumers commit concurrently, so received_at does not grow strictly with seq here: the
    # bounds are compared as they are, and the planner picks among the indexes by their statistics.
    # An expired event is never returned, swept or not; the cutoff also prunes its partitions away.
    for condition, value in (
        ('received_at COLLATE "C" >= ${}', cutoff),
        ("source = ${}", filters.source),
        ('received_at COLLATE "C" >= ${}', filters.since),
        ('received_at COLLATE "C" < ${}', filters.until),
    ):
        if value is not None:
            args.append(value)
            where += " AND " + condition.format(len(args))
    if filters.search:
        where += search.conditions(filters.search, args)
    order = "seq DESC" if descending else "seq"
    return f"SELECT {COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT $2", args
