"""The SQLite store's dedup keys and seq arithmetic, run on the connection's own thread (plain sqlite3).

`keys` maps the 16-byte hash of each (topic, event_id) ever stored to its event's seq and received_at in
milliseconds. It outlives the event (a tombstone) until KEY_RETENTION forgets it. The writer keeps
`received_at` non-decreasing in seq, so a moment is a seq bound found by binary search on the primary key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

# Hashes per lookup: one bound parameter each, far below SQLite's 32,766-parameter limit.
_PER_QUERY = 2000

NEWEST_SEQ = 2**63 - 1
# (MIN and MAX in one SELECT would scan the table; each in its own subquery is one seek.)
SEQ_ENDS = "SELECT (SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events)"
SEQ_PROBE = "SELECT seq, received_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1"


def _chunks(items: Sequence[object], size: int) -> Iterable[Sequence[object]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def lookup(conn: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, tuple[int, int]]:
    """hash -> (seq, received_ms) for the hashes `keys` holds; one primary-key seek each."""
    found: dict[bytes, tuple[int, int]] = {}
    for chunk in _chunks(hashes, _PER_QUERY):
        marks = ",".join("?" * len(chunk))
        for h, seq, ms in conn.execute(f"SELECT h, seq, received_ms FROM keys WHERE h IN ({marks})", chunk):
            found[h] = (seq, ms)
    return found


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
