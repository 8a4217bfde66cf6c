"""A PostgreSQL batch's events against the keys: seqs handed out in arrival order, the keys the sealed buckets
hold probed, and the keys no bucket holds inserted into the open one with their events.

A writer remembers what the store recorded at its last batch: RETENTION, KEY_RETENTION, SEARCH, the open key
bucket and the buckets without a filter. When it has that view, the seqs, a check of the view and the insert
go in one statement (ALLOCATE_NEW), one round trip less on every batch's path, `?wait=stored` requests
included. The check runs in that statement's snapshot, taken after the batch took KEYS_LOCK (shared), so no
writer can switch the open bucket between it and the insert. When the view is out of date (another consumer
sealed a bucket or recorded a setting), the statement hands out the seqs and inserts nothing; the writer
catches up with what it returned and inserts with NEW, as the first batch does after ALLOCATE. A view whose
open bucket is gone altogether (sealed, then forgotten by KEY_RETENTION) fails the statement: the view is
dropped and the writer retries the batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from contract.event import Event
from store.base import key_hash
from store.postgres import keys, search
from store.postgres.batch import ALLOCATE, new
from store.retention import Retention
from store.search import field_tokens, search_text, terms

# The checked insert: $1 the batch's hashes in arrival order (seqs are handed out for all of them) and $19
# which of them to insert (those no sealed bucket holds; a flag, not a look-up per key); $2 those hashes with
# their events' columns, as NEW's $3-$13; $14-$18 the writer's view. Back: whether the view held (nothing was
# inserted otherwise), the seqs, the hashes inserted, and the store's view.
_ALLOCATE_NEW = """
    WITH recorded AS MATERIALIZED (
        SELECT (SELECT value FROM consumer_state WHERE key = 'retention_seconds') AS retention,
            (SELECT value FROM consumer_state WHERE key = 'key_retention_seconds') AS key_retention,
            (SELECT value FROM consumer_state WHERE key = 'search') AS search,
            (SELECT max(bucket) FROM key_buckets) AS open,
            (SELECT array_agg(bucket ORDER BY bucket) FROM key_buckets WHERE filter IS NULL) AS unfiltered
    ), seen AS MATERIALIZED (
        SELECT recorded.*,
            (retention, key_retention, search, open, coalesce(unfiltered, '{{}}'::integer[]))
            IS NOT DISTINCT FROM ($14::text, $15::text, $16::text, $17::integer, $18::integer[]) AS ok
        FROM recorded
    ), allocated AS MATERIALIZED (
        SELECT s, i FROM eventagg_allocate(cardinality($1::bytea[])) WITH ORDINALITY AS a(s, i)
    ), numbered AS (
        SELECT h, s, fresh FROM unnest($1::bytea[], $19::bool[]) WITH ORDINALITY AS u(h, fresh, i)
        JOIN allocated USING (i)
    ), new AS (
        INSERT INTO {table} AS k (bucket, key_hash, seq, received_at)
        SELECT {bucket}, h, s, $9::timestamptz FROM numbered, seen WHERE seen.ok AND fresh
        ORDER BY h
        ON CONFLICT (key_hash) DO UPDATE SET seq = excluded.seq, received_at = excluded.received_at
        WHERE k.received_at < $10::timestamptz
        RETURNING key_hash, seq
    ), stored AS (
        INSERT INTO events (
            seq, topic, event_id, timestamp, source, payload, received_at, words, terms, fields
        )
        SELECT new.seq, t, e, ts, src, p, $8::text, w, string_to_array(wt, ' '), string_to_array(f, ' ')
        FROM unnest(
            $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $11::text[], $12::text[], $13::text[]
        ) AS u(h, t, e, ts, src, p, w, wt, f)
        JOIN new ON new.key_hash = u.h
    )
    SELECT ok, ARRAY(SELECT s FROM allocated ORDER BY i), ARRAY(SELECT key_hash FROM new),
        retention, key_retention, search, open, unfiltered
    FROM seen
"""

# What the store recorded, as ALLOCATE and ALLOCATE_NEW return it: RETENTION, KEY_RETENTION and SEARCH as
# text (None when never recorded).
View = tuple[str | None, str | None, str | None]


def allocate_new(bucket: int) -> str:
    return _ALLOCATE_NEW.format(table=keys.table(bucket), bucket=bucket)


@dataclass(slots=True)
class NewKeys:
    """What a batch's keys came to: hash -> (seq, key, event) of every first copy, the hashes inserted, and
    for the others what the sealed buckets hold (hash -> (seq, received_at))."""

    numbered: dict[bytes, tuple[int, tuple[str, str], Event]]
    inserted: list[bytes]
    held: dict[bytes, tuple[int, datetime]] = field(default_factory=dict)
    fresh: list[bytes] = field(default_factory=list)
    retention: Retention = field(default_factory=Retention)


class Numbering:
    """One writer's key buckets and its view of the store, kept from one batch to the next."""

    def __init__(self, buckets: keys.KeyBuckets) -> None:
        self.buckets = buckets
        self._view: View | None = None
        self.checked = 0  # batches that went in one statement (tests read these two)
        self.caught_up = 0  # batches whose view was out of date

    async def insert(
        self, conn: Any, first: dict[tuple[str, str], Event], received_at: str, moment: datetime
    ) -> NewKeys:
        """Inside a batch holding KEYS_LOCK: number `first` (the batch's first copy of each key, in arrival
        order) and insert what no bucket holds."""
        hashes = [key_hash(*key) for key in first]
        state = self.buckets.state
        if self._view is None or state is None:
            allocated = await conn.fetch(ALLOCATE, len(first))
            seqs = [int(r[0]) for r in allocated]
            view = (allocated[0][1], allocated[0][2], allocated[0][3])
            await self.buckets.refresh(conn, allocated[0][4], allocated[0][5] or [])
            return await self._insert(conn, first, hashes, seqs, view, received_at, moment)
        retention = _retention(self._view)
        held, fresh = await self._probe(conn, hashes, retention, moment)
        events = dict(zip(hashes, first.values(), strict=True))
        columns = _columns([events[h] for h in fresh], search.enabled(self._view[2]))
        try:
            row = await conn.fetchrow(
                allocate_new(self.buckets.open),
                hashes,
                fresh,
                *columns[:5],
                received_at,
                moment,
                _key_cutoff(retention, moment),
                *columns[5:],
                *self._view,
                state[0],
                list(state[1]),
                [h not in held for h in hashes],
            )
        except asyncpg.PostgresError:
            # A view so old that its open bucket was sealed and then forgotten names a table that is gone
            # (UndefinedTableError, retried at once by the writer): the next attempt reads the view anew.
            self._view = None
            raise
        ok, seqs, inserted, view = row[0], [int(s) for s in row[1]], row[2], (row[3], row[4], row[5])
        numbered = _numbered(first, hashes, seqs)
        if ok:
            self.checked += 1
            self._view = view
            return NewKeys(numbered, [bytes(h) for h in inserted], held, fresh, retention)
        self.caught_up += 1
        await self.buckets.refresh(conn, row[6], row[7] or [])
        return await self._insert(conn, first, hashes, seqs, view, received_at, moment)

    async def _insert(
        self,
        conn: Any,
        first: dict[tuple[str, str], Event],
        hashes: list[bytes],
        seqs: list[int],
        view: View,
        received_at: str,
        moment: datetime,
    ) -> NewKeys:
        """With the seqs handed out and the view caught up: NEW."""
        self._view = view
        retention = _retention(view)
        numbered = _numbered(first, hashes, seqs)
        held, fresh = await self._probe(conn, hashes, retention, moment)
        items = [numbered[h] for h in fresh]
        columns = _columns([e for _, _, e in items], search.enabled(view[2]))
        rows = await conn.fetch(
            new(self.buckets.open),
            fresh,
            [s for s, _, _ in items],
            *columns[:5],
            received_at,
            moment,
            _key_cutoff(retention, moment),
            *columns[5:],
        )
        return NewKeys(numbered, [bytes(r[0]) for r in rows], held, fresh, retention)

    async def _probe(
        self, conn: Any, hashes: list[bytes], retention: Retention, moment: datetime
    ) -> tuple[dict[bytes, tuple[int, datetime]], list[bytes]]:
        """The keys the sealed buckets hold and have not forgotten are duplicates; the others, in key order
        (the lock order), go to the open bucket."""
        cutoff = _key_cutoff(retention, moment)
        sealed = await self.buckets.probe(conn, sorted(hashes))
        held = {h: found for h, found in sealed.items() if cutoff is None or found[1] >= cutoff}
        return held, sorted(h for h in hashes if h not in held)


def _numbered(
    first: dict[tuple[str, str], Event], hashes: list[bytes], seqs: list[int]
) -> dict[bytes, tuple[int, tuple[str, str], Event]]:
    return {h: (s, key, item) for h, s, (key, item) in zip(hashes, seqs, first.items(), strict=True)}


def _retention(view: View) -> Retention:
    return Retention.from_state(
        {"retention_seconds": view[0] or "0", "key_retention_seconds": view[1] or "0"}
    )


def _key_cutoff(retention: Retention, moment: datetime) -> datetime | None:
    return None if retention.keys is None else moment - retention.keys


def _columns(events: list[Event], search_on: bool) -> list[list[str]]:
    """The events' columns for NEW and ALLOCATE_NEW: topic, id, timestamp, source, payload, and the search
    words, terms and field tokens (empty with SEARCH off)."""
    columns = [
        [e.topic for e in events],
        [e.event_id for e in events],
        [e.timestamp for e in events],
        [e.source for e in events],
        [e.payload_json() for e in events],
    ]
    if not search_on:  # nothing indexed, little cost
        return [*columns, [""] * len(events), [""] * len(events), [""] * len(events)]
    words = [search_text(e.source, e.payload) for e in events]
    return [
        *columns,
        words,
        [" ".join(terms(w)) for w in words],
        [" ".join(field_tokens(e.payload)) for e in events],
    ]
