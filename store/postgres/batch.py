"""The statements of a PostgreSQL batch's transaction (store/postgres/writer.py runs them in this order), and
the two steps that take more than one: the stored copies of duplicates, and dead letters."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from contract.event import Event
from store.base import StoredCopy
from store.clock import utc_text
from store.deadletters import DEAD_LETTERS_KEPT, Kept, Rejected, identity_lock, looked_up, not_kept_yet
from store.postgres import keys
from store.retention import Retention

_SECOND = timedelta(seconds=1)

# Seqs for the batch's new keys, with the retention and SEARCH the store records (read in the batch's
# transaction: what another consumer records counts from its commit on), and the key buckets: the open one,
# and those without a filter (the open one among them). After keys.LOCK_SHARED, in a statement of its own.
ALLOCATE = """
    SELECT s, (SELECT value FROM consumer_state WHERE key = 'retention_seconds'),
        (SELECT value FROM consumer_state WHERE key = 'key_retention_seconds'),
        (SELECT value FROM consumer_state WHERE key = 'search'),
        (SELECT max(bucket) FROM key_buckets),
        (SELECT array_agg(bucket) FROM key_buckets WHERE filter IS NULL)
    FROM eventagg_allocate($1) AS s
"""
# Dedup, for the keys no sealed bucket holds (store/postgres/keys.py): a key inserted into the open bucket
# is new; a key already there is a duplicate unless it was forgotten (received before $10, KEY_RETENTION's
# cutoff, NULL when keys are kept forever): then it takes the new seq and moment, and its event is stored
# again. In key order: concurrent batches wait on each other's keys in one order, so two consumers holding
# the same keys cannot deadlock. The events of the keys inserted go in with them, in one statement (one
# round trip), with their search words, terms and field tokens (store/postgres/search.py).
_NEW = """
    WITH new AS (
        INSERT INTO {table} AS k (bucket, key_hash, seq, received_at)
        SELECT {bucket}, h, s, $9::timestamptz FROM unnest($1::bytea[], $2::bigint[]) AS u(h, s) ORDER BY h
        ON CONFLICT (key_hash) DO UPDATE SET seq = excluded.seq, received_at = excluded.received_at
        WHERE k.received_at < $10::timestamptz
        RETURNING key_hash, seq
    ), stored AS (
        INSERT INTO events (
            seq, topic, event_id, timestamp, source, payload, received_at, words, terms, fields
        )
        SELECT u.s, t, e, ts, src, p, $8::text, w, string_to_array(wt, ' '), string_to_array(f, ' ')
        FROM unnest(
            $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $11::text[], $12::text[], $13::text[]
        ) AS u(s, t, e, ts, src, p, w, wt, f)
        JOIN new ON new.seq = u.s
    )
    SELECT key_hash FROM new
"""


def new(bucket: int) -> str:
    return _NEW.format(table=keys.table(bucket), bucket=bucket)


# The stored copies of the keys the batch did not insert, whose event has not expired, found by moment and
# seq: the planner reads only the partitions of those moments (plans are custom: store/postgres/schema.py
# PLANNING).
COPIES = """
    SELECT seq, timestamp, source, payload FROM events
    WHERE (received_at COLLATE "C") >= $1 AND (received_at COLLATE "C") < $2 AND seq = ANY($3::bigint[])
"""
# The slot for the rest of the transaction: the lowest one no other transaction holds, locked until the
# commit, and the batch's commit time recorded on it. SKIP LOCKED never waits; when every slot is held
# (more than SLOTS consumers) LEASE_ANY waits for one chosen at random. It runs after eventagg_allocate:
# locking the row assigns the transaction its id, which must come with its seqs (see above).
LEASE = """
    UPDATE writer_slots SET last_commit_at = $1
    WHERE slot = (SELECT slot FROM writer_slots ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING slot
"""
LEASE_ANY = "UPDATE writer_slots SET last_commit_at = $1 WHERE slot = $2 RETURNING slot"
# A topic's first-seen row is written once, by the first batch that stores it (with the batch's lowest seq of
# it, $6); only batches seeing a topic for the first time at the same moment meet here, in topic order. Its
# counts go to the leased slot's rows, which no concurrent batch touches.
TOPICS = """
    WITH first_seen AS (
        INSERT INTO topics (topic, first_seq)
        SELECT t, f FROM unnest($1::text[], $6::bigint[]) AS u(t, f)
        WHERE f IS NOT NULL AND NOT EXISTS (SELECT FROM topics WHERE topic = t)
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
COUNTERS = """
    UPDATE counter_slots AS c SET value = c.value + u.delta
    FROM unnest($1::text[], $2::bigint[]) AS u(name, delta)
    WHERE c.slot = $3 AND c.name = u.name
"""
# The receipts, LEASE, TOPICS and COUNTERS in one statement (one round trip instead of four, on the path
# of every `?wait=stored` request): the receipts, the slot leased, the topics' first-seen rows, and the counts
# on the slot's rows. Back: the slot (NULL when none was free), the receipts inserted, and the number of
# notices sent. Nothing but the receipts and the lease is done when no slot was free: the batch then waits
# for one with LEASE_ANY and runs TOPICS and COUNTERS on it, as before, so a topic's first-seen row is never
# held while waiting for a slot. The notice ($10, built for every receipt of $11 inserted) goes out only when
# they all were; otherwise the caller sends the one that names the receipts inserted.
LEASED_COUNTS = """
    WITH recorded AS (
        INSERT INTO receipts (receipt, new, duplicates, committed_at)
        SELECT r, n, d, $1::text FROM unnest($11::text[], $12::bigint[], $13::bigint[]) AS u(r, n, d)
        ORDER BY r
        ON CONFLICT (receipt) DO NOTHING
        RETURNING receipt
    ), lease AS (
        UPDATE writer_slots SET last_commit_at = $1
        WHERE slot = (SELECT slot FROM writer_slots ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING slot
    ), first_seen AS (
        INSERT INTO topics (topic, first_seq)
        SELECT t, f FROM unnest($2::text[], $6::bigint[]) AS u(t, f)
        WHERE f IS NOT NULL AND EXISTS (SELECT FROM lease) AND NOT EXISTS (SELECT FROM topics WHERE topic = t)
        ORDER BY t
        ON CONFLICT (topic) DO NOTHING
    ), topic_counted AS (
        INSERT INTO topic_counts (topic, slot, count, duplicates, conflicts)
        SELECT t, lease.slot, c, d, x
        FROM lease, unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(t, c, d, x)
        ORDER BY t
        ON CONFLICT (topic, slot) DO UPDATE SET count = topic_counts.count + excluded.count,
            duplicates = topic_counts.duplicates + excluded.duplicates,
            conflicts = topic_counts.conflicts + excluded.conflicts
    ), counted AS (
        UPDATE counter_slots AS c SET value = c.value + u.delta
        FROM lease, unnest($7::text[], $8::bigint[]) AS u(name, delta)
        WHERE c.slot = lease.slot AND c.name = u.name
    )
    SELECT
        (SELECT slot FROM lease),
        ARRAY(SELECT receipt FROM recorded),
        (
            SELECT count(pg_notify($9, p)) FROM unnest($10::text[]) AS p
            WHERE EXISTS (SELECT FROM lease) AND (SELECT count(*) FROM recorded) = cardinality($11::text[])
        )
"""
SUMMED_COUNTERS = "SELECT name, SUM(value)::bigint FROM counter_slots GROUP BY name"
STATE = """
    INSERT INTO consumer_state (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
DEAD_LETTER = """
    INSERT INTO dead_letters (at, kind, reason, routing_key, body, size, truncated, message_id, unclaimed)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::bool[], $8::text[],
        $9::bool[]
    )
"""
# The dead letters an invalid message matches, and those of them kept from a redelivery and not claimed by a
# first delivery (store/deadletters.py not_kept_yet); through dead_letters_by_size.
_MATCHES = "size = $1 AND routing_key = $2 AND body = $3 AND message_id IS NOT DISTINCT FROM $4"
DEAD_LETTERS_KEPT_AS = """
    SELECT u.i, count(d.id), count(d.id) FILTER (WHERE d.unclaimed)
    FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::text[]) WITH ORDINALITY AS u(rk, sz, b, mid, i)
    LEFT JOIN dead_letters AS d
        ON d.size = u.sz AND d.routing_key = u.rk AND d.body = u.b AND d.message_id IS NOT DISTINCT FROM u.mid
    GROUP BY u.i
"""
DEAD_LETTERS_CLAIM = f"""
    UPDATE dead_letters SET unclaimed = false
    WHERE id IN (SELECT id FROM dead_letters WHERE {_MATCHES} AND unclaimed ORDER BY id LIMIT $5)
"""
DEAD_LETTER_COUNT = """
    INSERT INTO dead_letter_counts (kind, count)
    SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 1
    ON CONFLICT (kind) DO UPDATE SET count = dead_letter_counts.count + excluded.count
"""
# Everything older than the newest DEAD_LETTERS_KEPT; only in a batch that rejected something.
DEAD_LETTER_TRIM = """
    DELETE FROM dead_letters WHERE id < (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET $1)
"""


async def stored_copies(
    conn: Any,
    numbered: dict[bytes, tuple[int, tuple[str, str], Event]],
    known: list[tuple[bytes, int, datetime]],
    retention: Retention,
    moment: datetime,
) -> dict[tuple[str, str], StoredCopy]:
    """What each key the batch did not insert holds (`known`: hash, seq, received_at): the stored copy, or
    None when its event has expired (or was swept): a duplicate whose conflict cannot be seen."""
    cutoff = None if retention.events is None else moment - retention.events
    by_seq = {int(r[1]): numbered[bytes(r[0])][1] for r in known}
    live = [(int(r[1]), r[2]) for r in known if cutoff is None or r[2] >= cutoff]
    stored: dict[tuple[str, str], StoredCopy] = dict.fromkeys(by_seq.values())
    if live:
        lo, hi = min(m for _, m in live), max(m for _, m in live)
        # The upper bound a second later: a moment written without microseconds sorts after those with.
        await conn.execute(keys.CUSTOM_PLANS)  # pruned to the moments' partitions when planned
        copies = await conn.fetch(COPIES, utc_text(lo), utc_text(hi + _SECOND), [s for s, _ in live])
        for seq, timestamp, source, payload in copies:
            if int(seq) in by_seq:
                stored[by_seq[int(seq)]] = (str(timestamp), str(source), str(payload))
    return stored


async def dead_letters_not_kept_yet(conn: Any, rejected: list[Rejected]) -> list[Rejected]:
    """The rejected messages to keep and count (store/deadletters.py not_kept_yet), the claims made. Two
    consumers may hold the same message at once (one read it from a connection the broker had closed): each
    identity's lock, taken in one order before its lookup, makes the second wait for the first's commit and
    then see its dead letter."""
    wanted = looked_up(rejected)
    for lock in sorted({identity_lock(identity) for identity in wanted}):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
    found = await conn.fetch(
        DEAD_LETTERS_KEPT_AS,
        [routing_key for routing_key, _, _, _ in wanted],
        [size for _, size, _, _ in wanted],
        [body for _, _, body, _ in wanted],
        [message_id for _, _, _, message_id in wanted],
    )
    kept = {wanted[int(i) - 1]: Kept(int(all_), int(unclaimed)) for i, all_, unclaimed in found}
    verdict = not_kept_yet(rejected, kept)
    for (routing_key, size, body, message_id), count in verdict.claimed.items():
        await conn.execute(DEAD_LETTERS_CLAIM, size, routing_key, body, message_id, count)
    return verdict.fresh


async def keep_dead_letters(conn: Any, rejected: list[Rejected]) -> None:
    bodies = [item.stored_body() for item in rejected]
    await conn.execute(
        DEAD_LETTER,
        [item.at for item in rejected],
        [item.kind for item in rejected],
        [item.reason for item in rejected],
        [item.routing_key for item in rejected],
        [body for body, _ in bodies],
        [len(item.body) for item in rejected],
        [truncated for _, truncated in bodies],
        [item.message_id for item in rejected],
        [item.redelivered for item in rejected],
    )
    kinds = sorted(Counter(item.kind for item in rejected).items())
    await conn.execute(DEAD_LETTER_COUNT, [k for k, _ in kinds], [n for _, n in kinds])
    status = await conn.execute(DEAD_LETTER_TRIM, DEAD_LETTERS_KEPT - 1)
    dropped = int(status.split()[-1])  # "DELETE n"
    if dropped:
        await conn.execute("UPDATE dead_letter_totals SET dropped = dropped + $1", dropped)
