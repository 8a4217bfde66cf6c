"""The statements of a SQLite batch's transaction (store/sqlite/writer.py runs them on its thread), and the
steps that take more than one: dead letters, receipts, and consumer_state rows."""

from __future__ import annotations

import sqlite3
from collections import Counter

from store.deadletters import DEAD_LETTERS_KEPT, Kept, Rejected, looked_up, not_kept_yet

INSERT = (
    "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
TOPICS = (
    "INSERT INTO topics (topic, count, first_seq, duplicates, conflicts)"
    " VALUES (?1, ?2, (SELECT MIN(seq) FROM events WHERE topic = ?1), ?3, ?4)"
    " ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count,"
    " duplicates = duplicates + excluded.duplicates, conflicts = conflicts + excluded.conflicts"
)
STATE = (
    "INSERT INTO consumer_state (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_DEAD_LETTER = (
    "INSERT INTO dead_letters (at, kind, reason, routing_key, body, size, truncated, message_id, unclaimed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The dead letters an invalid message matches, and those of them kept from a redelivery and not claimed by a
# first delivery (store/deadletters.py not_kept_yet); through dead_letters_by_size.
_MATCHES = "size = ? AND routing_key = ? AND body = ? AND message_id IS ?"
_KEPT = f"SELECT COUNT(*), COALESCE(SUM(unclaimed), 0) FROM dead_letters WHERE {_MATCHES}"
_CLAIM = (
    f"UPDATE dead_letters SET unclaimed = 0"
    f" WHERE id IN (SELECT id FROM dead_letters WHERE {_MATCHES} AND unclaimed ORDER BY id LIMIT ?)"
)
_DEAD_LETTER_COUNT = (
    "INSERT INTO dead_letter_counts (kind, count) VALUES (?, ?)"
    " ON CONFLICT (kind) DO UPDATE SET count = count + excluded.count"
)
# Everything older than the newest DEAD_LETTERS_KEPT; a walk down the primary key, only in a batch that
# rejected something.
_DEAD_LETTER_TRIM = (
    "DELETE FROM dead_letters WHERE id < (SELECT id FROM dead_letters ORDER BY id DESC LIMIT 1 OFFSET ?)"
)


def dead_letters_not_kept_yet(conn: sqlite3.Connection, rejected: list[Rejected]) -> list[Rejected]:
    """The rejected messages to keep and count (store/deadletters.py not_kept_yet), the claims made."""
    kept = {}
    for identity in looked_up(rejected):
        routing_key, size, body, message_id = identity
        found = conn.execute(_KEPT, (size, routing_key, body, message_id)).fetchone()
        kept[identity] = Kept(int(found[0]), int(found[1]))
    verdict = not_kept_yet(rejected, kept)
    for (routing_key, size, body, message_id), count in verdict.claimed.items():
        conn.execute(_CLAIM, (size, routing_key, body, message_id, count))
    return verdict.fresh


def keep_dead_letters(conn: sqlite3.Connection, rejected: list[Rejected]) -> None:
    rows = []
    for item in rejected:
        body, truncated = item.stored_body()
        size = len(item.body)
        rows.append(
            (
                item.at,
                item.kind,
                item.reason,
                item.routing_key,
                body,
                size,
                int(truncated),
                item.message_id,
                int(item.redelivered),
            )
        )
    conn.executemany(_DEAD_LETTER, rows)
    conn.executemany(_DEAD_LETTER_COUNT, Counter(item.kind for item in rejected).items())
    dropped = conn.execute(_DEAD_LETTER_TRIM, (DEAD_LETTERS_KEPT - 1,)).rowcount
    if dropped > 0:
        conn.execute("UPDATE dead_letter_totals SET dropped = dropped + ?", (dropped,))


def record_state(conn: sqlite3.Connection, items: list[tuple[str, str]]) -> None:
    """consumer_state rows, in a transaction of their own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(STATE, items)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# Receipt rows in one INSERT at most: 4 bound parameters each, under SQLite's limit of 32,766.
_RECEIPT_ROWS = 1000


def record_receipts(
    conn: sqlite3.Connection, marked: list[tuple[str, int, int]], received_at: str
) -> list[tuple[str, int, int]]:
    """Insert the batch's receipt rows; returns those inserted, the figures the commit notice carries. A
    receipt already stored (a redelivered message) keeps its first figures and is not among them."""
    fresh: set[str] = set()
    for start in range(0, len(marked), _RECEIPT_ROWS):
        chunk = marked[start : start + _RECEIPT_ROWS]
        rows = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        inserted = conn.execute(
            f"INSERT INTO receipts (receipt, new, duplicates, committed_at) VALUES {rows}"
            " ON CONFLICT (receipt) DO NOTHING RETURNING receipt",
            [value for row in chunk for value in (*row, received_at)],
        ).fetchall()
        fresh.update(str(r[0]) for r in inserted)
    return [row for row in marked if row[0] in fresh]
