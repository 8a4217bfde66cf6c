"""The PostgreSQL store's dedup keys, in buckets: the open one new keys go to, and sealed ones with filters.

`event_keys` maps the 16-byte hash of each (topic, event_id) ever stored to its event's seq and received_at;
a key outlives its event (a tombstone) until KEY_RETENTION forgets it. The table is partitioned by LIST on
`bucket`, one table a bucket (event_keys_b<n>), each with its own primary key on the hash. New keys all go
to the open bucket (the highest), so a batch only dirties pages of an index of at most BUCKET_KEYS keys,
however many the store holds. With one index over every key, each new key landed on a leaf page of its own:
past shared_buffers each was read in, written back and logged in full after every checkpoint (10,000,000
keys: a 387 MB index, and ingest at 0.78x the empty store's).

A sealed bucket never gains a key. Its Bloom filter (store/filters.py) is in `key_buckets` and in each
writer's memory, so a batch probes only the sealed buckets whose filter lets one of its keys through.

Several consumers write at once, so sealing is a protocol:
- every batch takes KEYS_LOCK shared before it reads which bucket is open (in a statement of its own, whose
  snapshot then sees every switch committed before the lock was granted), and holds it to its commit;
- to seal bucket b, the next bucket's table is created and attached first (blocking nobody), then b+1 is
  recorded as open under KEYS_LOCK exclusive: that waits for every batch still writing to b, so once b+1 is
  open b never changes, and a batch that probes b sees every key b will ever hold;
- b's filter is built after that, from b's keys; until it is stored, every batch probes b for every key (a
  crash in between leaves that state, and the next writer to start or seal finishes it).
SEAL_LOCK (a session lock) keeps sealers to one at a time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg

from store.filters import Filters, build

log = logging.getLogger(__name__)

KEYS_LOCK: Final = 0x65766167_00000005  # batches shared, the switch to a new open bucket exclusive
SEAL_LOCK: Final = 0x65766167_00000006  # one sealer at a time

# Keys a bucket holds before it is sealed. The open bucket's index is what every batch writes: at 1,000,000
# keys about 45 MB, inside the default shared_buffers (128 MB). EVENTAGG_KEY_BUCKET_KEYS makes buckets small
# so that a test seals many.
BUCKET_KEYS: Final = int(os.environ.get("EVENTAGG_KEY_BUCKET_KEYS", "1000000"))
# How long a switch to a new open bucket waits for the batches in flight, and when it tries again if that
# was not enough.
SWITCH_WAIT: Final = 1.0
SEAL_RETRY: Final = 10.0
# A filter's 64-bit words: 16 bits a key at BUCKET_KEYS keys (2 MiB a bucket of 1,000,000).
WORDS: Final = max(64, 1 << max(0, (BUCKET_KEYS // 4 - 1).bit_length()))

COLUMNS: Final = (
    "bucket integer NOT NULL, key_hash bytea NOT NULL, seq bigint NOT NULL, received_at timestamptz NOT NULL"
)
LOCK_SHARED: Final = f"SELECT pg_advisory_xact_lock_shared({KEYS_LOCK})"
# Every bucket, with the filters of those this writer has not loaded yet.
_BUCKETS = """
    SELECT bucket, first_seq, CASE WHEN bucket = ANY($1::integer[]) THEN NULL ELSE filter END
    FROM key_buckets ORDER BY bucket
"""
# In a batch's transaction on the writer's connection (store/postgres/schema.py BATCH_PLANNING), before a
# statement that must be planned with its values, so that its plan names only the partitions it reads.
CUSTOM_PLANS: Final = "SET LOCAL plan_cache_mode = force_custom_plan"
# The sealed buckets' keys among the batch's: candidates from the filters (a plan names only those buckets).
_PROBE = """
    SELECT key_hash, bucket, seq, received_at FROM event_keys
    WHERE bucket = ANY($1::integer[]) AND key_hash = ANY($2::bytea[])
    ORDER BY bucket
"""


def table(bucket: int) -> str:
    return f"event_keys_b{bucket}"


def known_open(bucket: int) -> str:
    """What the open bucket holds for keys a batch did not insert (its snapshot sees the commits the insert
    waited for)."""
    return f"SELECT key_hash, seq, received_at FROM {table(bucket)} WHERE key_hash = ANY($1::bytea[])"


async def create_bucket(conn: Any, bucket: int, primary_key: bool = True) -> None:
    """A bucket's table, attached (SHARE UPDATE EXCLUSIVE on `event_keys`: neither batches nor reads wait);
    done again after a crash between the two, it finishes what is missing."""
    name = table(bucket)
    key = ", PRIMARY KEY (key_hash)" if primary_key else ""
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ({COLUMNS}{key})")
    attached = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = $1::regclass)", name
    )
    if not attached:
        await conn.execute(f"ALTER TABLE event_keys ATTACH PARTITION {name} FOR VALUES IN ({bucket})")


async def _filter_of(conn: Any, bucket: int) -> tuple[bytes, datetime | None]:
    hashes = [bytes(r[0]) for r in await conn.fetch(f"SELECT key_hash FROM {table(bucket)}")]
    newest = await conn.fetchval(f"SELECT max(received_at) FROM {table(bucket)}")
    return build(hashes, WORDS), newest


async def finish(conn: Any) -> int:
    """Build and store the filter of every sealed bucket that lacks one; the number built. The caller holds
    SEAL_LOCK."""
    rows = await conn.fetch(
        "SELECT bucket FROM key_buckets WHERE filter IS NULL"
        " AND bucket < (SELECT max(bucket) FROM key_buckets) ORDER BY bucket"
    )
    for (bucket,) in rows:
        blob, newest = await _filter_of(conn, int(bucket))
        await conn.execute(
            "UPDATE key_buckets SET filter = $2, newest = $3 WHERE bucket = $1", int(bucket), blob, newest
        )
    return len(rows)


async def finish_sealing(conn: Any) -> None:
    """At a writer's start: finish the filters a sealer that stopped left undone, unless one is sealing."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SEAL_LOCK):
        return
    try:
        built = await finish(conn)
        if built:
            log.info("built the filters of %d sealed key buckets", built)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SEAL_LOCK)


async def load(conn: Any, source: str) -> None:
    """Move every key of `source` (a table of key_hash, seq, received_at) into sealed buckets by seq, with
    their filters, and open the next bucket; `event_keys` and `key_buckets` must be empty. One statement
    routes the keys; each bucket's primary key is built after its rows are in."""
    top = await conn.fetchval(f"SELECT max(seq) FROM {source}")
    sealed = 0 if top is None else int(top) // BUCKET_KEYS + 1
    for bucket in range(sealed):
        await create_bucket(conn, bucket, primary_key=False)
    if sealed:
        await conn.execute(
            f"INSERT INTO event_keys (bucket, key_hash, seq, received_at)"
            f" SELECT (seq / {BUCKET_KEYS})::integer, key_hash, seq, received_at FROM {source}"
        )
    for bucket in range(sealed):
        await conn.execute(f"ALTER TABLE {table(bucket)} ADD PRIMARY KEY (key_hash)")
        blob, newest = await _filter_of(conn, bucket)
        await conn.execute(
            "INSERT INTO key_buckets (bucket, first_seq, newest, filter) VALUES ($1, $2, $3, $4)",
            bucket,
            bucket * BUCKET_KEYS,
            newest,
            blob,
        )
    await create_bucket(conn, sealed)
    await conn.execute("INSERT INTO key_buckets (bucket, first_seq) VALUES ($1, $2)", sealed, top or 0)


async def migrate_to_buckets(conn: Any) -> None:
    """Schema 9: the one key table becomes bucket tables (store/postgres/keys.py)."""
    await conn.execute(
        """
        ALTER TABLE event_keys RENAME TO event_keys_v8;
        ALTER INDEX event_keys_pkey RENAME TO event_keys_v8_pkey;
        ALTER INDEX event_keys_by_time RENAME TO event_keys_v8_by_time;
        CREATE TABLE key_buckets (
            bucket integer PRIMARY KEY, first_seq bigint NOT NULL, newest timestamptz, filter bytea
        );
        """
        f"CREATE TABLE event_keys ({COLUMNS}) PARTITION BY LIST (bucket);"
        "CREATE INDEX event_keys_by_time ON event_keys (received_at);"
    )
    await load(conn, "event_keys_v8")
    await conn.execute("DROP TABLE event_keys_v8")


async def _switch(conn: Any, bucket: int) -> bool:
    """Open the bucket after `bucket` once no batch is writing to it; False when one held it over
    SWITCH_WAIT (nothing changed). The caller holds SEAL_LOCK."""
    await create_bucket(conn, bucket + 1)
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(SWITCH_WAIT * 1000)}")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", KEYS_LOCK)
            await conn.execute(
                "INSERT INTO key_buckets (bucket, first_seq) SELECT $1, last_value FROM events_seq",
                bucket + 1,
            )
    except asyncpg.LockNotAvailableError:
        return False
    return True


class KeyBuckets:
    """One writer's view of the buckets: which is open, the sealed ones' filters, those without one yet."""

    def __init__(self) -> None:
        self.open = -1
        self.first_seq = 0  # the store's last seq when the open bucket opened
        self.filters = Filters(WORDS)
        self.unfiltered: list[
            int
        ] = []  # sealed, filter not built (or of another width): probed for every key
        self._state: tuple[int, tuple[int, ...]] | None = None
        self._seal_after = 0.0  # monotonic: after a switch that could not wait, not before

    @property
    def state(self) -> tuple[int, tuple[int, ...]] | None:
        """(the open bucket, the buckets without a filter, sorted) as the last refresh found them."""
        return self._state

    async def refresh(self, conn: Any, open_bucket: int, without_filter: Sequence[int]) -> None:
        """Inside a batch holding KEYS_LOCK: catch up with the buckets the store records, when the open one
        or those lacking a filter changed since the last batch."""
        state = (int(open_bucket), tuple(sorted(int(b) for b in without_filter)))
        if state == self._state:
            return
        present = set()
        unfiltered = []
        for bucket, first_seq, blob in await conn.fetch(_BUCKETS, self.filters.buckets):
            bucket = int(bucket)
            present.add(bucket)
            if bucket == state[0]:
                self.first_seq = int(first_seq)
            elif bucket in self.filters.buckets:
                continue
            elif blob is None:
                unfiltered.append(bucket)
            else:
                try:
                    self.filters.add(bucket, bytes(blob))
                except ValueError as exc:  # built with another EVENTAGG_KEY_BUCKET_KEYS: probed every time
                    log.warning("%s; that bucket is searched for every key", exc)
                    unfiltered.append(bucket)
        for bucket in [b for b in self.filters.buckets if b not in present]:
            self.filters.remove(bucket)  # forgotten by KEY_RETENTION
        self.open, self.unfiltered, self._state = state[0], unfiltered, state

    async def probe(self, conn: Any, hashes: Sequence[bytes]) -> dict[bytes, tuple[int, datetime]]:
        """hash -> (seq, received_at) of the newest key of each hash the sealed buckets hold."""
        buckets = set(self.unfiltered)
        wanted: set[int] = set(range(len(hashes))) if self.unfiltered else set()
        for bucket, positions in self.filters.candidates(hashes).items():
            buckets.add(bucket)
            wanted.update(positions)
        if not buckets:
            return {}
        await conn.execute(CUSTOM_PLANS)  # pruned to those buckets when planned
        rows = await conn.fetch(_PROBE, sorted(buckets), [hashes[i] for i in sorted(wanted)])
        return {bytes(r[0]): (int(r[2]), r[3]) for r in rows}  # newest bucket last: it wins

    def full(self, last_seq: int) -> bool:
        return last_seq - self.first_seq >= BUCKET_KEYS and time.monotonic() >= self._seal_after

    async def seal(self, conn: Any) -> None:
        """After a commit that filled the open bucket: open the next and build the sealed one's filter,
        unless another writer is sealing (then its switch shows in a later batch). The switch waits at most
        SWITCH_WAIT for the batches in flight (one may be stalled: a consumer stopped mid-transaction), as
        the batches starting meanwhile wait behind it; past that it gives up and tries again SEAL_RETRY
        later."""
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SEAL_LOCK):
            return
        started = time.monotonic()
        try:
            bucket = int(await conn.fetchval("SELECT max(bucket) FROM key_buckets"))
            if bucket == self.open and not await _switch(conn, bucket):
                self._seal_after = time.monotonic() + SEAL_RETRY
                log.warning(
                    "key bucket %d not sealed: a batch held it over %.0fs; trying again in %.0fs",
                    bucket,
                    SWITCH_WAIT,
                    SEAL_RETRY,
                )
                return
            built = await finish(conn)
            if bucket == self.open:
                log.info(
                    "sealed key bucket %d (%d filters) in %.2fs", bucket, built, time.monotonic() - started
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", SEAL_LOCK)
