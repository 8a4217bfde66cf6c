"""The PostgreSQL backend through asyncpg: DDL, migrations, writer (several may run at once), reader."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import asyncpg

from contract.config import redact
from contract.schema import COUNTERS
from store.base import (
    COLUMNS,
    DEAD_LETTER_COLUMNS,
    DEAD_LETTERS_KEPT,
    NO_FILTERS,
    Backend,
    BatchResult,
    DeadLetterCounts,
    DeadLetterPage,
    Durability,
    Filters,
    Message,
    Page,
    Rejected,
    Row,
    Snapshot,
    StoreConfigError,
    StoreError,
    count_duplicates,
    dead_letter,
    empty_snapshot,
    receipt_rows,
    receipts_expired_before,
    rejected_in,
    sort_batch,
    utc_now,
)

log = logging.getLogger(__name__)

BACKEND: Final = "postgresql"

# Any advisory-lock key of this product: one for migrations, one for handing out seqs.
_MIGRATION_LOCK = 0x65766167_00000001
_SEQ_LOCK = 0x65766167_00000002

# Rows each counter and each topic's counts are striped over. A batch leases one slot for its transaction
# (_LEASE), so batches committing at the same time never move the same counter row: each consumer has one
# transaction open at a time, and 16 is more consumers than one PostgreSQL serves before it should be
# partitioned (docs/scaling.md). The lowest free slot is leased, so the rows in use follow the consumers that
# actually commit at once, not this number; a read sums at most SLOTS rows per counter and per topic.
SLOTS: Final = 16

# The same tables as SQLite's, with two additions for concurrent writers:
# - `txid`, the writing transaction's id. Several consumers commit concurrently, so a batch holding seq 10
#   can commit after one holding seq 11 is visible; a page read must not step past 10 before it exists.
#   eventagg_allocate() hands out seqs and the transaction id together under a short advisory lock, so seq
#   order is transaction-id order among writers. A page then holds only rows whose transaction is older
#   than every writer still running (see _watermark), and no later commit can land below them.
# - The payload is TEXT, not jsonb: it stays byte-for-byte what the consumer serialised, as in SQLite, so
#   the api's JSON is identical whichever backend stored the event.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE SEQUENCE events_seq AS bigint;
    CREATE TABLE events (
        seq          bigint PRIMARY KEY,
        topic        text NOT NULL,
        event_id     text NOT NULL,
        timestamp    text NOT NULL,
        source       text NOT NULL,
        payload      text NOT NULL,
        received_at  text NOT NULL,
        txid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
        UNIQUE (topic, event_id)
    );
    CREATE INDEX events_by_topic ON events (topic, seq);
    CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
    INSERT INTO counters (name, value) VALUES
        ('received', 0), ('unique_processed', 0), ('duplicate_dropped', 0), ('invalid', 0), ('conflicts', 0);
    CREATE TABLE topics (topic text PRIMARY KEY, count bigint NOT NULL, first_seq bigint);
    CREATE TABLE consumer_state (key text PRIMARY KEY, value text NOT NULL);
    CREATE FUNCTION eventagg_allocate(n integer) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
    BEGIN
        -- A session lock, released at once: xid assignment and nextval happen in one order for all writers.
        PERFORM pg_advisory_lock({_SEQ_LOCK});
        BEGIN
            PERFORM pg_current_xact_id();
            RETURN QUERY SELECT nextval('events_seq') FROM generate_series(1, n);
        EXCEPTION WHEN query_canceled OR OTHERS THEN
            PERFORM pg_advisory_unlock({_SEQ_LOCK});
            RAISE;
        END;
        PERFORM pg_advisory_unlock({_SEQ_LOCK});
    END $$;
    """,
    # POST /publish?wait=stored: which marked messages are committed, and how many of their events each
    # stored (store/base.py receipt_rows); kept an hour.
    """
    CREATE TABLE receipts (
        receipt text PRIMARY KEY, new bigint NOT NULL, duplicates bigint NOT NULL, committed_at text NOT NULL
    );
    CREATE INDEX receipts_by_time ON receipts (committed_at);
    """,
    # Dead letters, written in the transaction that counts them invalid; `id` orders them (newest first).
    """
    CREATE TABLE dead_letters (
        id           bigserial PRIMARY KEY,
        at           text NOT NULL,
        kind         text NOT NULL,
        reason       text NOT NULL,
        routing_key  text NOT NULL,
        body         bytea NOT NULL,
        size         bigint NOT NULL,
        truncated    boolean NOT NULL
    );
    CREATE TABLE dead_letter_counts (kind text PRIMARY KEY, count bigint NOT NULL);
    CREATE TABLE dead_letter_totals (dropped bigint NOT NULL);
    INSERT INTO dead_letter_totals (dropped) VALUES (0);
    """,
    # GET /events by source and by received_at (compared as text in the C collation: ISO 8601 UTC with
    # microseconds sorts as it reads, whatever the database's locale).
    """
    CREATE INDEX events_by_source ON events (source, seq);
    CREATE INDEX events_by_received_at ON events ((received_at COLLATE "C"), seq);
    """,
    # Duplicates and conflicts per topic, moved in the batch's transaction like the global counters (from
    # this version on: a store migrated to it starts them at 0).
    """
    ALTER TABLE topics ADD COLUMN duplicates bigint NOT NULL DEFAULT 0;
    ALTER TABLE topics ADD COLUMN conflicts bigint NOT NULL DEFAULT 0;
    """,
    # Striped counters (see _LEASE): every counter and per-topic count is a sum over SLOTS rows, one per
    # writer slot, so concurrent batches move different rows and do not wait on each other's commit. What
    # the store held moves to slot 0 exactly; the first-seen row of a topic stays in `topics`, written once.
    # `counters` is renamed and the counts leave `topics`, so a consumer of an earlier release still running
    # while this migrates fails its batches (acking nothing; they are redelivered) instead of adding each
    # count to every slot's row.
    f"""
    CREATE TABLE writer_slots (slot smallint PRIMARY KEY, last_commit_at text);
    INSERT INTO writer_slots (slot) SELECT generate_series(0, {SLOTS - 1});
    UPDATE writer_slots SET last_commit_at = (SELECT value FROM consumer_state WHERE key = 'last_commit_at')
    WHERE slot = 0;
    DELETE FROM consumer_state WHERE key = 'last_commit_at';
    ALTER TABLE counters RENAME TO counter_slots;
    ALTER TABLE counter_slots ADD COLUMN slot smallint NOT NULL DEFAULT 0;
    ALTER TABLE counter_slots DROP CONSTRAINT counters_pkey;
    ALTER TABLE counter_slots ADD PRIMARY KEY (name, slot);
    ALTER TABLE counter_slots ALTER COLUMN slot DROP DEFAULT;
    INSERT INTO counter_slots (name, slot, value)
    SELECT name, s, 0 FROM counter_slots, generate_series(1, {SLOTS - 1}) AS s;
    CREATE TABLE topic_counts (
        topic       text NOT NULL,
        slot        smallint NOT NULL,
        count       bigint NOT NULL,
        duplicates  bigint NOT NULL,
        conflicts   bigint NOT NULL,
        PRIMARY KEY (topic, slot)
    );
    INSERT INTO topic_counts (topic, slot, count, duplicates, conflicts)
    SELECT topic, 0, count, duplicates, conflicts FROM topics;
    ALTER TABLE topics DROP COLUMN count, DROP COLUMN duplicates, DROP COLUMN conflicts;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT = """
    INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)
    SELECT s, t, e, ts, src, p, $7::text
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS u(s, t, e, ts, src, p)
    ON CONFLICT (topic, event_id) DO NOTHING
    RETURNING topic, event_id
"""
_STORED = """
    SELECT topic, event_id, timestamp, source, payload FROM events
    WHERE (topic, event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""
# The slot for the rest of the transaction: the lowest one no other transaction holds, locked until the
# commit, and the batch's commit time recorded on it. SKIP LOCKED never waits; when every slot is held
# (more than SLOTS consumers) _LEASE_ANY waits for one chosen at random. It runs after eventagg_allocate:
# locking the row assigns the transaction its id, which must come with its seqs (see above).
_LEASE = """
    UPDATE writer_slots SET last_commit_at = $1
    WHERE slot = (SELECT slot FROM writer_slots ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING slot
"""
_LEASE_ANY = "UPDATE writer_slots SET last_commit_at = $1 WHERE slot = $2 RETURNING slot"
# A topic's first-seen row is written once, by the first batch that stores it; only batches seeing a topic
# for the first time at the same moment meet here, in topic order. Its counts go to the leased slot's rows,
# which no concurrent batch touches.
_TOPICS = """
    WITH first_seen AS (
        INSERT INTO topics (topic, first_seq)
        SELECT t, (SELECT MIN(seq) FROM events WHERE topic = t) FROM unnest($1::text[]) AS u(t)
        WHERE NOT EXISTS (SELECT FROM topics WHERE topic = t)
        ORDER BY t
        ON CONFLICT (topic) DO NOTHING
    )
    INSERT INTO topic_counts (topic, slot, count, duplicates, conflicts)
    SELECT t, $5::smallint, c, d, x
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(t, c, d, x)
    ORDER BY t
    ON CONFLICT (topic, slot) DO UPDATE SET count = topic_counts.count + excluded.count,
        duplicates = topic_counts.duplicates + excluded.duplicates,
        conflicts = topic_counts.conflicts + excluded.conflicts
"""
_COUNTERS = """
    UPDATE counter_slots AS c SET value = c.value + u.delta
    FROM unnest($1::text[], $2::bigint[]) AS u(name, delta)
    WHERE c.slot = $3 AND c.name = u.name
"""
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
_RECEIPTS = """
    INSERT INTO receipts (receipt, new, duplicates, committed_at)
    SELECT r, n, d, $4::text FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(r, n, d)
    ORDER BY r
    ON CONFLICT (receipt) DO NOTHING
"""
_STATE = """
    INSERT INTO consumer_state (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
_DEAD_LETTER = """
    INSERT INTO dead_letters (at, kind, reason, routing_key, body, size, truncated)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::bool[]
    )
"""
_DEAD_LETTER_COUNT = """
    INSERT INTO dead_letter_counts (kind, count)
    SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 1
    ON CONFLICT (kind) DO UPDATE SET count = dead_letter_counts.count + excluded.count
"""
# Everything older than the newest DEAD_LETTERS_KEPT; only in a batch that rejected something.
_DEAD_LETTER_TRIM = """
    DELETE FROM dead_letters WHERE id < (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET $1)
"""
# Rows only from transactions older than every running one: nothing can commit below them any more.
_SAFE = "txid < $4::text::xid8"
# The writers still running, as seen before the page's own snapshot is taken: the next transaction id to
# be assigned and the 32-bit ids of this database's consumer sessions that hold one.
_WRITERS = """
    SELECT pg_snapshot_xmax(pg_current_snapshot())::text, array(
        SELECT backend_xid::text FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = $1 AND backend_xid IS NOT NULL
    )
"""
# How the consumers' sessions name themselves, so the readers can find the transactions still running.
WRITER_APPLICATION = "eventagg-consumer"

# A batch that lost a deadlock or a serialization check is retried at once this many times (then the
# consumer's own backoff takes over); the locks are taken in one order, so this should stay rare.
_TRANSACTION_RETRIES = 5


def _where(url: str) -> str:
    return f"DATABASE_URL={redact(url)}"


def _connect_error(url: str, exc: BaseException) -> StoreError:
    """One line naming DATABASE_URL; configuration mistakes are StoreConfigError (the consumer exits)."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return StoreConfigError(f"{_where(url)}: wrong password ({exc})")
    if isinstance(exc, (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)):
        return StoreConfigError(f"{_where(url)}: {exc}")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return StoreConfigError(f"{_where(url)}: no permission to create or use the store's tables ({exc})")
    if isinstance(exc, asyncpg.InvalidSchemaNameError):
        return StoreConfigError(
            f"{_where(url)}: no schema to create the store's tables in ({exc}); check search_path and the "
            "role's USAGE and CREATE privileges on it"
        )
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return StoreError(f"cannot reach the database at {_where(url)}: {type(exc).__name__}: {exc}")
    return StoreError(f"{_where(url)}: {type(exc).__name__}: {exc}")


# InternalClientError: seen when the server died under a transaction (asyncpg then refused the COMMIT with
# "cannot switch to state 15; another operation (2) is in progress"); it must be a store error to retry.
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(
            url, timeout=10, server_settings={"application_name": WRITER_APPLICATION}
        )
    except _DB_ERRORS as exc:
        raise _connect_error(url, exc) from exc


async def migrate(conn: Any, url: str) -> None:
    """Migrate under an advisory lock: consumers starting together migrate once, one after the other."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS eventagg_schema (version integer NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM eventagg_schema") or 0
            if version > SCHEMA_VERSION:
                raise StoreConfigError(
                    f"{_where(url)}: store schema version {version} is newer than this program's "
                    f"{SCHEMA_VERSION}"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("INSERT INTO eventagg_schema (version) VALUES ($1)", target)
                log.info("store migrated to schema version=%d", target)
    except _DB_ERRORS as exc:
        raise _connect_error(url, exc) from exc


def durability_of(settings: dict[str, str]) -> Durability:
    if not settings:
        return Durability(BACKEND, None)
    # Every synchronous_commit but `off` waits for the local WAL flush (on, local, remote_write,
    # remote_apply); `off` can lose recent commits that were already acked.
    durable = settings.get("synchronous_commit") != "off" and settings.get("fsync") == "on"
    warning = None
    if not durable:
        warning = (
            f"the writer runs synchronous_commit={settings.get('synchronous_commit')} "
            f"fsync={settings.get('fsync')}: an acked commit may be lost on a crash; set "
            "synchronous_commit=on and fsync=on"
        )
    return Durability(BACKEND, durable, settings, warning)


class PostgresWriter:
    """One consumer's connection; several consumers may write the same database at once."""

    backend: Backend = BACKEND

    def __init__(self, url: str, conn: Any, before_commit: Callable[[], None] | None) -> None:
        self._url = url
        self._conn: Any = conn
        self._before_commit = before_commit  # fault injection for the crash tests (consumer/faults.py)

    @classmethod
    async def open(cls, url: str, before_commit: Callable[[], None] | None = None) -> PostgresWriter:
        conn = await _connect(url)
        try:
            await migrate(conn, url)
        except BaseException:
            await conn.close()
            raise
        return cls(url, conn, before_commit)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), 5)
            except _DB_ERRORS:
                conn.terminate()

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await _connect(self._url)
        return self._conn

    async def _settings(self, conn: Any) -> dict[str, str]:
        return {
            "synchronous_commit": str(await conn.fetchval("SHOW synchronous_commit")),
            "fsync": str(await conn.fetchval("SHOW fsync")),
        }

    async def durability(self) -> Durability:
        try:
            return durability_of(await self._settings(await self._connection()))
        except _DB_ERRORS as exc:
            raise self._error(exc) from exc

    async def record_start(self, started_at: str) -> None:
        try:
            conn = await self._connection()
            settings = await self._settings(conn)
            async with conn.transaction():
                await conn.executemany(_STATE, [("started_at", started_at), *settings.items()])
        except _DB_ERRORS as exc:
            raise self._error(exc) from exc
        report = durability_of(settings)
        if report.warning:
            log.warning("STORE NOT DURABLE: %s", report.warning)

    def _error(self, exc: BaseException) -> StoreError:
        # An error the server reported leaves the connection usable; any other (lost, timed out, or asyncpg's
        # protocol left mid-operation) may not, so the next attempt opens a new one.
        if self._conn is not None and (self._conn.is_closed() or not isinstance(exc, asyncpg.PostgresError)):
            conn, self._conn = self._conn, None
            conn.terminate()
        return StoreError(f"{_where(self._url)}: {type(exc).__name__}: {exc}")

    async def apply(
        self, messages: Sequence[Message], receipts: Sequence[str | None] | None = None
    ) -> BatchResult:
        """Apply a batch in ONE transaction; retried at once when it loses a deadlock or serialization check.

        Raises StoreError with nothing applied; the caller must then ack nothing.
        """
        for attempt in range(1, _TRANSACTION_RETRIES + 1):
            try:
                return await self._apply(await self._connection(), messages, receipts)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                if attempt == _TRANSACTION_RETRIES:
                    raise self._error(exc) from exc
                log.warning(
                    "batch rolled back by %s; retrying, %d attempts left",
                    type(exc).__name__,
                    _TRANSACTION_RETRIES - attempt,
                )
                await asyncio.sleep(random.uniform(0, 0.01 * attempt))
            except _DB_ERRORS as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _apply(
        self, conn: Any, messages: Sequence[Message], receipts: Sequence[str | None] | None
    ) -> BatchResult:
        batch = sort_batch(messages)
        received_at = utc_now()
        async with conn.transaction():
            stored: dict[tuple[str, str], tuple[str, str, str]] = {}
            inserted: set[tuple[str, str]] = set()
            if batch.first:
                # Seqs in arrival order (paging shows a batch as it came, as on SQLite) ...
                seqs = await conn.fetch("SELECT eventagg_allocate($1)", len(batch.first))
                numbered = sorted(
                    zip((r[0] for r in seqs), batch.first.values(), strict=True),
                    key=lambda pair: (pair[1].topic, pair[1].event_id),
                )
                # ... but inserted in key order: concurrent batches wait on each other's keys in one order,
                # so two consumers holding the same keys cannot deadlock.
                rows = await conn.fetch(
                    _INSERT,
                    [s for s, _ in numbered],
                    [e.topic for _, e in numbered],
                    [e.event_id for _, e in numbered],
                    [e.timestamp for _, e in numbered],
                    [e.source for _, e in numbered],
                    [e.payload_json() for _, e in numbered],
                    received_at,
                )
                inserted = {(r[0], r[1]) for r in rows}
                existing = [key for key in batch.first if key not in inserted]
                if existing:
                    # What ON CONFLICT skipped is stored and committed (by an earlier batch or a concurrent
                    # consumer, whose commit the insert waited for): this statement's snapshot sees it.
                    for r in await conn.fetch(_STORED, [k[0] for k in existing], [k[1] for k in existing]):
                        stored[(r[0], r[1])] = (r[2], r[3], r[4])
            count_duplicates(batch, stored, inserted)
            result = batch.result
            marked = receipt_rows(messages, receipts, batch, inserted)
            if marked:
                await conn.execute(
                    _RECEIPTS,
                    [r[0] for r in marked],
                    [r[1] for r in marked],
                    [r[2] for r in marked],
                    received_at,
                )
                await conn.execute("DELETE FROM receipts WHERE committed_at < $1", receipts_expired_before())
            slot = await conn.fetchval(_LEASE, received_at)
            if slot is None:
                slot = await conn.fetchval(_LEASE_ANY, received_at, random.randrange(SLOTS))
            per_topic = result.topic_deltas(Counter(key[0] for key in inserted))
            if per_topic:
                await conn.execute(_TOPICS, *(list(column) for column in zip(*per_topic, strict=True)), slot)
            deltas = result.deltas()
            if deltas:
                await conn.execute(_COUNTERS, [name for name, _ in deltas], [d for _, d in deltas], slot)
            rejected = rejected_in(messages)
            if rejected:
                await _keep_dead_letters(conn, rejected)
            if self._before_commit is not None:
                self._before_commit()
        return result

    async def counters(self) -> dict[str, int]:
        rows = await (await self._connection()).fetch(_SUMMED_COUNTERS)
        return {str(r[0]): int(r[1]) for r in rows}


async def _keep_dead_letters(conn: Any, rejected: list[Rejected]) -> None:
    bodies = [item.stored_body() for item in rejected]
    await conn.execute(
        _DEAD_LETTER,
        [item.at for item in rejected],
        [item.kind for item in rejected],
        [item.reason for item in rejected],
        [item.routing_key for item in rejected],
        [body for body, _ in bodies],
        [len(item.body) for item in rejected],
        [truncated for _, truncated in bodies],
    )
    kinds = sorted(Counter(item.kind for item in rejected).items())
    await conn.execute(_DEAD_LETTER_COUNT, [k for k, _ in kinds], [n for _, n in kinds])
    status = await conn.execute(_DEAD_LETTER_TRIM, DEAD_LETTERS_KEPT - 1)
    dropped = int(status.split()[-1])  # "DELETE n"
    if dropped:
        await conn.execute("UPDATE dead_letter_totals SET dropped = dropped + $1", dropped)


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
                        self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=4, timeout=10)
                    except _DB_ERRORS as exc:
                        raise _connect_error(self._url, exc) from exc
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[Any] | None:
        """Rows, or None while the consumer has not created the tables yet."""
        pool = await self._get_pool()
        try:
            return cast(list[Any], await pool.fetch(sql, *args))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            return None
        except _DB_ERRORS as exc:
            raise _connect_error(self._url, exc) from exc

    async def _watermark(self) -> str:
        """A transaction id below which every writer has finished: the oldest consumer transaction still
        running, or the next id to be assigned when none runs.

        Read in its own statement before the page's: a writer that gets its id after this moment gets a
        larger one (and, through eventagg_allocate, larger seqs than every row below the watermark), and one
        that finished before it is visible to the page's later snapshot. Only this database's consumer
        sessions count, so unrelated long transactions on the server do not hold pages back.
        """
        rows = await self._fetch(_WRITERS, WRITER_APPLICATION)
        if not rows:
            raise StoreError(f"{_where(self._url)}: no answer from pg_stat_activity")
        next_id = int(rows[0][0])
        bound = next_id
        for text in rows[0][1]:
            # pg_stat_activity shows the 32-bit id; its epoch is next_id's, or the one before on wraparound.
            full = (next_id >> 32 << 32) | int(text)
            if full >= next_id:
                full -= 1 << 32
            bound = min(bound, full)
        return str(bound)

    async def page(
        self,
        topic: str | None,
        limit: int,
        after: int,
        descending: bool = False,
        filters: Filters = NO_FILTERS,
    ) -> Page:
        where = f"seq {'<' if descending else '>'} $1 AND {_SAFE}"
        args: list[Any] = [after, limit + 1, topic, await self._watermark()]
        if topic is not None:
            where += " AND topic = $3::text"
        else:
            where += " AND $3::text IS NULL"
        # Several consumers commit concurrently, so received_at does not grow strictly with seq here: the
        # bounds are compared as they are, and the planner picks among the indexes by their statistics.
        for condition, value in (
            ("source = ${}", filters.source),
            ('received_at COLLATE "C" >= ${}', filters.since),
            ('received_at COLLATE "C" < ${}', filters.until),
        ):
            if value is not None:
                args.append(value)
                where += " AND " + condition.format(len(args))
        order = "seq DESC" if descending else "seq"
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT $2", *args
        )
        found = [cast(Row, tuple(r)) for r in rows or []]
        more = len(found) > limit
        found = found[:limit]
        return Page(found, found[-1][0] if more else None)

    async def event_row(self, topic: str, event_id: str) -> Row | None:
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM events WHERE topic = $1 AND event_id = $2", topic, event_id
        )
        return cast(Row, tuple(rows[0])) if rows else None

    async def snapshot(self) -> Snapshot:
        """Counters and per-topic counts in one REPEATABLE READ transaction, so they agree with each other."""
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                counters = await conn.fetch(_SUMMED_COUNTERS)
                topics = await conn.fetch(_SUMMED_TOPICS)
                consumer = await conn.fetch(_CONSUMER_STATE)
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            return empty_snapshot(BACKEND)
        except _DB_ERRORS as exc:
            raise _connect_error(self._url, exc) from exc
        state = {str(r[0]): str(r[1]) for r in consumer}
        values = {str(r[0]): int(r[1]) for r in counters}
        recorded = {str(k): state[k] for k in ("synchronous_commit", "fsync") if k in state}
        return Snapshot(
            {name: values.get(name, 0) for name in COUNTERS},
            {str(r[0]): int(r[1]) for r in topics},
            state,
            "ok",
            durability_of(recorded),
            {str(r[0]): int(r[2]) for r in topics},
            {str(r[0]): int(r[3]) for r in topics},
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
