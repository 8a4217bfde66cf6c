"""The PostgreSQL store's schema: DDL, migrations under an advisory lock, connections and their errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

from contract.config import redact
from store.base import Durability, StoreConfigError, StoreError
from store.postgres import search
from store.postgres.keys import migrate_to_buckets
from store.postgres.partitions import migrate_to_partitions

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
MIGRATIONS: tuple[str | Callable[[Any], Awaitable[None]], ...] = (
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
    # Retention: `events` partitioned by time (store/postgres/partitions.py), dedup by a compact key table
    # (key_hash, seq, received_at) that outlives the events, and the totals the sweeps removed.
    migrate_to_partitions,
    # GET /events?q= and payload.<field>=: words and field tokens, and their indexes.
    search.migrate,
    # Dedup keys in buckets: new keys go to a small open one, the sealed ones have filters (keys.py).
    migrate_to_buckets,
    # An invalid message is looked for among the dead letters kept (store/deadletters.py not_kept_yet): by
    # its message id too, whether one kept from a redelivery was claimed by its first delivery, and through
    # an index, not a scan of up to 100,000 bodies.
    """
    ALTER TABLE dead_letters ADD COLUMN message_id text;
    ALTER TABLE dead_letters ADD COLUMN unclaimed boolean NOT NULL DEFAULT false;
    CREATE INDEX dead_letters_by_size ON dead_letters (size, routing_key);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

WRITER_APPLICATION = "eventagg-consumer"
# The sweep's own connection: its transactions insert no events, so pages need not wait for them.
SWEEPER_APPLICATION = "eventagg-sweeper"
# Every statement planned with its values: a plan then names only the partitions it reads (a cutoff or a
# moment prunes the others at plan time), so batches and reads never lock a partition being detached.
PLANNING = {"plan_cache_mode": "force_custom_plan"}
# The writer's batches but for that: its statements on plain tables (and its inserts, routed to a partition
# as they execute) keep their plans, which saves re-planning every statement of every batch (about 0.9 ms of
# a one-event batch's 3.7 here). The two that read partitions by value (the stored copies, the sealed key
# buckets' probe) run after keys.CUSTOM_PLANS, in their transaction.
BATCH_PLANNING = {"plan_cache_mode": "auto"}

# A batch that lost a deadlock or a serialization check is retried at once this many times (then the
# consumer's own backoff takes over); the locks are taken in one order, so this should stay rare.
_TRANSACTION_RETRIES = 5


def where(url: str) -> str:
    return f"DATABASE_URL={redact(url)}"


def connect_error(url: str, exc: BaseException) -> StoreError:
    """One line naming DATABASE_URL; configuration mistakes are StoreConfigError (the consumer exits)."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return StoreConfigError(f"{where(url)}: wrong password ({exc})")
    if isinstance(exc, (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)):
        return StoreConfigError(f"{where(url)}: {exc}")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return StoreConfigError(f"{where(url)}: no permission to create or use the store's tables ({exc})")
    if isinstance(exc, asyncpg.InvalidSchemaNameError):
        return StoreConfigError(
            f"{where(url)}: no schema to create the store's tables in ({exc}); check search_path and the "
            "role's USAGE and CREATE privileges on it"
        )
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return StoreError(f"cannot reach the database at {where(url)}: {type(exc).__name__}: {exc}")
    return StoreError(f"{where(url)}: {type(exc).__name__}: {exc}")


# InternalClientError: seen when the server died under a transaction (asyncpg then refused the COMMIT with
# "cannot switch to state 15; another operation (2) is in progress"); it must be a store error to retry.
DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)


async def connect(
    url: str, application: str = WRITER_APPLICATION, planning: dict[str, str] = PLANNING
) -> Any:
    try:
        return await asyncpg.connect(
            url, timeout=10, server_settings={"application_name": application, **planning}
        )
    except DB_ERRORS as exc:
        raise connect_error(url, exc) from exc


@asynccontextmanager
async def batch_transaction(conn: Any, opening: str) -> AsyncIterator[None]:
    """A transaction whose BEGIN goes with its first statements (`opening`, no parameters) in one round trip,
    where asyncpg's `transaction()` sends BEGIN alone; committed when the block ends, rolled back when it
    raises. A connection that cannot roll back is terminated: it is not reused in an unknown state."""
    try:
        await conn.execute(opening)
        yield
    except BaseException:
        if not conn.is_closed():
            try:
                await conn.execute("ROLLBACK")
            except BaseException:  # the block's own error is the one to raise
                conn.terminate()
        raise
    await conn.execute("COMMIT")


async def migrate(conn: Any, url: str) -> None:
    """Migrate under an advisory lock: consumers starting together migrate once, one after the other."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS eventagg_schema (version integer NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM eventagg_schema") or 0
            if version > SCHEMA_VERSION:
                raise StoreConfigError(
                    f"{where(url)}: store schema version {version} is newer than this program's "
                    f"{SCHEMA_VERSION}"
                )
            for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                if isinstance(script, str):
                    await conn.execute(script)
                else:
                    await script(conn)
                await conn.execute("INSERT INTO eventagg_schema (version) VALUES ($1)", target)
                log.info("store migrated to schema version=%d", target)
    except DB_ERRORS as exc:
        raise connect_error(url, exc) from exc


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
