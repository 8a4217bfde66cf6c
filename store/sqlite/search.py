"""The SQLite store's search index: an FTS5 table beside `events`, one row per event (rowid = seq), written
in the batch's transaction while SEARCH is on (`record`), and swept with the events.

The writer hands FTS5 the words store/search.py made (`search_text`, `field_tokens`), and FTS5's `ascii`
tokenizer splits them again only at ASCII spaces and punctuation, which those texts hold only between
words: FTS5 then indexes exactly the words and tokens Python made, so both backends agree on every answer.
`detail=full` keeps word positions for phrases; `columnsize=0` leaves out the per-row sizes that only
ranking needs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from contract.event import Event
from store.search import STATE_KEY, Search, field_tokens, search_text

# Created empty: the index is filled when SEARCH is turned on (record), and kept while it stays on.
MIGRATION = """
    CREATE VIRTUAL TABLE events_search USING fts5(
        words, fields, tokenize = 'ascii', detail = full, columnsize = 0
    );
"""
_BACKFILL = """
    INSERT INTO events_search (rowid, words, fields)
    SELECT seq, eventagg_words(source, payload), eventagg_fields(payload) FROM events ORDER BY seq
"""
_STATE = "SELECT value FROM consumer_state WHERE key = ?"
_RECORD = (
    "INSERT INTO consumer_state (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)

INSERT = "INSERT INTO events_search (rowid, words, fields) VALUES (?, ?, ?)"


def stored_words(source: str, payload: str) -> str:
    """search_text of a stored row (turning SEARCH on indexes the events already stored)."""
    return search_text(source, json.loads(payload))


def stored_fields(payload: str) -> str:
    return " ".join(field_tokens(json.loads(payload)))


def register(conn: sqlite3.Connection) -> None:
    """The functions that index the events already stored, on the writer's connection."""
    conn.create_function("eventagg_words", 2, stored_words, deterministic=True)
    conn.create_function("eventagg_fields", 1, stored_fields, deterministic=True)


def enabled(conn: sqlite3.Connection) -> bool:
    row = conn.execute(_STATE, (STATE_KEY,)).fetchone()
    return row is not None and row[0] == "on"


def record(conn: sqlite3.Connection, on: bool) -> bool:
    """Make SEARCH `on` or off the store's, in one transaction; returns what it was. Turned on, the index is
    built from every event stored (about 20 us an event here, before the consumer takes deliveries); turned
    off, it is emptied (the space goes back to SQLite's freelist)."""
    before = enabled(conn)
    if before == on:
        return before
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DROP TABLE events_search")
        conn.execute(MIGRATION)
        if on:
            conn.execute(_BACKFILL)
        conn.execute(_RECORD, (STATE_KEY, "on" if on else "off"))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return before


def index_rows(numbered: Iterable[tuple[int, Event]]) -> list[tuple[int, str, str]]:
    return [(seq, search_text(e.source, e.payload), " ".join(field_tokens(e.payload))) for seq, e in numbered]


def sweep(conn: sqlite3.Connection, upper: int) -> None:
    """Remove the index rows of the events below `upper` (in the sweep's transaction)."""
    conn.execute("DELETE FROM events_search WHERE rowid < ?", (upper,))


def _quoted(words: Iterable[str]) -> str:
    return '"' + " ".join(words) + '"'  # words hold no quotes


def match(search: Search) -> str:
    """The FTS5 query: every phrase in `words`, one of each field's tokens in `fields`."""
    parts = [f"words : {_quoted(phrase)}" for phrase in search.phrases]
    parts += [f"fields : ({' OR '.join(_quoted([t]) for t in tokens)})" for tokens in search.fields]
    return " AND ".join(parts)


def search_query(
    columns: str, where: list[str], params: list[Any], search: Search, descending: bool, limit: int
) -> tuple[str, list[Any]]:
    """One page of a search: FTS5 yields the matching seqs in order (its rowid order, no sort), the
    conditions on `events` are checked on each by primary key, and the page stops at `limit`
    (EXPLAIN QUERY PLAN in the store suite). `where` speaks of `seq`, which is the FTS5 rowid here."""
    conditions = [c.replace("seq", "events_search.rowid", 1) if c.startswith("seq") else c for c in where]
    order = "events_search.rowid DESC" if descending else "events_search.rowid"
    sql = (
        f"SELECT {columns} FROM events_search JOIN events ON events.seq = events_search.rowid"
        f" WHERE events_search MATCH ? AND {' AND '.join(conditions)} ORDER BY {order} LIMIT ?"
    )
    return sql, [match(search), *params, limit + 1]
