"""The SQLite store's dedup keys and seq arithmetic, run on the connection's own thread (plain sqlite3).

`keys` maps the 16-byte hash of each (topic, event_id) ever stored to its event's seq and received_at in
milliseconds. It outlives the event (a tombstone) until KEY_RETENTION forgets it.

Keys are kept in buckets of about BUCKET_KEYS, in the order they arrive, and the primary key is (bucket,
hash). New keys all go to the one open bucket, so however many keys the store holds, a commit only dirties
pages of that bucket: a few hundred, where one index over every key had each new key land on a leaf page
of its own (one page written per new event, at 1,000,000 keys and more). A sealed bucket never changes,
and has a Bloom filter in memory (store/filters.py), so a lookup only searches the buckets whose
filter lets the key through: the open one, and about one in 600 of the others for a new key.

The writer keeps `received_at` non-decreasing in seq, so a moment is a seq bound found by binary search on
the primary key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

# Hashes per lookup: one bound parameter each, far below SQLite's 32,766-parameter limit.
_PER_QUERY = 2000
# Keys a bucket holds before it is sealed: its pages are what a commit dirties, and each sealed bucket costs
# the writer a filter of 256 KiB.
BUCKET_KEYS = 100_000

NEWEST_SEQ = 2**63 - 1
# (MIN and MAX in one SELECT would scan the table; each in its own subquery is one seek.)
SEQ_ENDS = "SELECT (SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events)"
SEQ_PROBE = "SELECT seq, received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1"


def _chunks(items: Sequence[object], size: int) -> Iterable[Sequence[object]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def lookup(
    conn: sqlite3.Connection, hashes: Sequence[bytes], open_bucket: int, candidates: dict[int, list[int]]
) -> dict[bytes, tuple[int, int]]:
    """hash -> (seq, received_ms) of the newest key of each hash: searched in the open bucket, then in the
    sealed buckets whose filters let it through (`candidates`: bucket -> positions in `hashes`)."""
    found: dict[bytes, tuple[int, int]] = {}
    searches = [(open_bucket, list(hashes))]
    for bucket in sorted(candidates, reverse=True):  # newest first: a key stored again shadows the old one
        searches.append((bucket, [hashes[i] for i in candidates[bucket]]))
    for bucket, wanted in searches:
        wanted = [h for h in wanted if h not in found]
        for chunk in _chunks(wanted, _PER_QUERY):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT h, seq, received_ms FROM keys WHERE bucket = ? AND h IN ({marks})"
            for h, seq, ms in conn.execute(sql, (bucket, *chunk)):
                found[h] = (seq, ms)
    return found


# Every bucket, newest first; a seek on (bucket, hash) in each (EXPLAIN QUERY PLAN in the store suite).
KEY_OF = (
    "SELECT seq, received_ms FROM keys WHERE bucket IN (SELECT bucket FROM key_buckets) AND h = ?"
    " ORDER BY bucket DESC LIMIT 1"
)


def key_of(conn: sqlite3.Connection, h: bytes) -> tuple[int, int] | None:
    """(seq, received_ms) of the newest key with this hash, for a reader (no filters: one key)."""
    row = conn.execute(KEY_OF, (h,)).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def copies(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, tuple[str, str, str]]:
    """seq -> (timestamp, source, payload) of the events still stored among `seqs`."""
    found: dict[int, tuple[str, str, str]] = {}
    for chunk in _chunks(seqs, _PER_QUERY):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT seq, timestamp, source, payload FROM events WHERE seq IN ({marks})"
        for seq, timestamp, source, payload in conn.execute(sql, chunk):
            found[seq] = (timestamp, source, payload)
    return found


def first_seq_at_or_after(conn: sqlite3.Connection, moment: str) -> int | None:
    """The first seq stored at or after `moment` (received_at), by binary search on the primary key.

    About 20 primary-key seeks at 1,000,000 events, where an index on received_at would add a B-tree write
    to every insert.
    """
    ends = conn.execute(SEQ_ENDS).fetchone()
    if ends is None or ends[0] is None:
        return None
    low, high = int(ends[0]), int(ends[1])
    found = None
    while low <= high:
        middle = (low + high) // 2
        row = conn.execute(SEQ_PROBE, (middle,)).fetchone()
        if row is None or int(row[0]) > high:  # no row between middle and high
            high = middle - 1
            continue
        seq, received_at = int(row[0]), str(row[1])
        if received_at >= moment:
            found, high = seq, middle - 1
        else:
            low = seq + 1
    return found


def expired_bound(conn: sqlite3.Connection, cutoff: str | None) -> int:
    """The lowest seq that is not expired (every seq below it is): 0 when nothing is expired."""
    if cutoff is None:
        return 0
    first = first_seq_at_or_after(conn, cutoff)
    return NEWEST_SEQ if first is None else first
