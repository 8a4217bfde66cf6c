"""The writer's key buckets: the open one new keys go to, and the filters of the sealed ones.

All of it runs on the connection's own thread (plain sqlite3), like the batch it serves. The open bucket
is sealed right after the commit that fills it: its filter is built from its hashes and stored in
`key_buckets` in the same transaction that opens the next bucket, so a crash leaves either the old state or
the new one. Filters are built for any sealed bucket that lacks one when the writer opens the store
(a store migrated from schema 6 has none).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence

from store.filters import Filters, build
from store.sqlite.keys import BUCKET_KEYS, lookup

log = logging.getLogger(__name__)

# Keys deleted per transaction when a whole bucket is forgotten (KEY_RETENTION).
FORGET_CHUNK = 5000


class KeyBuckets:
    def __init__(self) -> None:
        self.open = 0
        self.open_keys = 0
        self.filters = Filters()

    def load(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT bucket, keys, filter FROM key_buckets ORDER BY bucket").fetchall()
        if not rows:
            raise sqlite3.DatabaseError("key_buckets is empty: the store's schema is damaged")
        *sealed, (self.open, self.open_keys, _) = rows
        started, built = time.monotonic(), 0
        for bucket, _, filter_blob in sealed:
            if filter_blob is None:
                filter_blob = self._store_filter(conn, bucket)
                built += 1
            self.filters.add(int(bucket), bytes(filter_blob))
        if built:
            log.info("built the filters of %d key buckets in %.1fs", built, time.monotonic() - started)

    def _store_filter(self, conn: sqlite3.Connection, bucket: int) -> bytes:
        hashes = [bytes(r[0]) for r in conn.execute("SELECT h FROM keys WHERE bucket = ?", (bucket,))]
        blob = build(hashes)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE key_buckets SET filter = ? WHERE bucket = ?", (blob, bucket))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return blob

    def find(self, conn: sqlite3.Connection, hashes: Sequence[bytes]) -> dict[bytes, tuple[int, int]]:
        """hash -> (seq, received_ms) of the newest key of each hash the store holds."""
        return lookup(conn, hashes, self.open, self.filters.candidates(hashes))

    def record(self, conn: sqlite3.Connection, rows: list[tuple[bytes, int, int]]) -> None:
        """Insert (hash, seq, received_ms) into the open bucket, inside the batch's transaction; a key
        forgotten by KEY_RETENTION and stored again may already be in it."""
        conn.executemany(
            "INSERT INTO keys (bucket, h, seq, received_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (bucket, h) DO UPDATE SET seq = excluded.seq, received_ms = excluded.received_ms",
            [(self.open, *row) for row in rows],
        )
        conn.execute(
            "UPDATE key_buckets SET keys = keys + ?, newest_ms = ? WHERE bucket = ?",
            (len(rows), rows[-1][2], self.open),
        )

    def counted(self, added: int) -> None:
        """After the batch committed: its keys are in the open bucket."""
        self.open_keys += added

    @property
    def full(self) -> bool:
        return self.open_keys >= BUCKET_KEYS

    def seal(self, conn: sqlite3.Connection) -> None:
        """Seal the open bucket with its filter and open the next, in one transaction."""
        hashes = [bytes(r[0]) for r in conn.execute("SELECT h FROM keys WHERE bucket = ?", (self.open,))]
        blob = build(hashes)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE key_buckets SET filter = ? WHERE bucket = ?", (blob, self.open))
            conn.execute("INSERT INTO key_buckets (bucket, keys) VALUES (?, 0)", (self.open + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.filters.add(self.open, blob)
        self.open, self.open_keys = self.open + 1, 0

    def forget_one(
        self, conn: sqlite3.Connection, forgotten_ms: int, before_commit: Callable[[], None] | None
    ) -> tuple[int, bool]:
        """Delete up to FORGET_CHUNK keys of the oldest sealed bucket whose newest key is older than
        `forgotten_ms`; (keys removed, whether there may be more to do)."""
        row = conn.execute(
            "SELECT bucket FROM key_buckets WHERE bucket < ? AND newest_ms < ? ORDER BY bucket LIMIT 1",
            (self.open, forgotten_ms),
        ).fetchone()
        if row is None:
            return 0, False
        bucket = int(row[0])
        conn.execute("BEGIN IMMEDIATE")
        try:
            upper = conn.execute(
                "SELECT h FROM keys WHERE bucket = ? ORDER BY h LIMIT 1 OFFSET ?", (bucket, FORGET_CHUNK)
            ).fetchone()
            if upper is None:  # the rest of the bucket, and the bucket itself
                removed = conn.execute("DELETE FROM keys WHERE bucket = ?", (bucket,)).rowcount
                conn.execute("DELETE FROM key_buckets WHERE bucket = ?", (bucket,))
            else:
                removed = conn.execute(
                    "DELETE FROM keys WHERE bucket = ? AND h < ?", (bucket, bytes(upper[0]))
                ).rowcount
            if removed and before_commit is not None:
                before_commit()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if upper is None:
            self.filters.remove(bucket)
        return removed, True
