"""The PostgreSQL store's search columns, written with the event by the writers while SEARCH is on
(`record`; off, they are empty): `terms`, the event's distinct words (store/search.py `term`), with a GIN
index; `words`, the words in order (`search_text`); `fields`, the top-level field tokens, with a GIN index.
Whole partitions leave with their indexes when the sweep drops them.

Every phrase's words must be in `terms` (`@>`, answered by the GIN index, whose fast scan skips through
the long posting lists of common words when a rare one is asked for too), and the phrase must be in
`words` as such (`LIKE '% w1 w2 %'`, checked on the candidates), which is exactly the phrase match SQLite's
FTS5 makes over the same words. The LIKE is there for single words too: the array's statistics know only
common words and estimate any other at 0.5% of the rows, so the planner walked the whole table in seq order
for a word of one event (360 ms at 300,000); the LIKE's estimate, from the `words` histogram, is near 0 for
a rare word and near 1 for a common one, and the planner picks the index or the walk as it should. A field
is an overlap with its candidate tokens.

Not trigrams on `words`: every trigram of a common word is in every row, so a phrase holding one (`"stored
event 123"`) scanned long posting lists: 44 ms p50, 134 ms p99 at 1,000,000 events
(bench/search_postgres.py). Not a JSONB index on the payload: PostgreSQL's jsonb cannot hold `\\u0000`,
which JSON and our payloads may, so an index on `payload::jsonb` would make such an event impossible to
store; the batch holding it would be retried forever (DESIGN.md invariant 5). The tokens answer the same
equality, as SQLite does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from store.search import STATE_KEY, Search, field_tokens, search_text, term, terms

COLUMNS_DDL: Final = """,
    words        text NOT NULL DEFAULT '',
    terms        text[] NOT NULL DEFAULT '{}',
    fields       text[] NOT NULL DEFAULT '{}'
"""
_CHUNK = 20_000
_STATE = "SELECT value FROM consumer_state WHERE key = $1"
_RECORD = """
    INSERT INTO consumer_state (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
# A consumer's transaction that began before SEARCH was turned on (it may store events without words).
_OLDER_BATCHES = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
      AND xact_start < $2
"""
_WAIT_STEP, _WAIT_STEPS = 0.05, 1200
_WAITED = _WAIT_STEP * _WAIT_STEPS


async def migrate(conn: Any) -> None:
    """Schema 8, in the migration's transaction: the three columns (empty: the events are indexed when
    SEARCH is turned on, see `record`) and their indexes."""
    await conn.execute(
        "ALTER TABLE events ADD COLUMN words text NOT NULL DEFAULT '',"
        " ADD COLUMN terms text[] NOT NULL DEFAULT '{}', ADD COLUMN fields text[] NOT NULL DEFAULT '{}'"
    )
    # Partial: with SEARCH off the arrays are empty, and an empty array would still be a GIN entry per event.
    await conn.execute("CREATE INDEX events_by_terms ON events USING gin (terms) WHERE terms <> '{}'")
    await conn.execute("CREATE INDEX events_by_fields ON events USING gin (fields) WHERE fields <> '{}'")


def enabled(value: str | None) -> bool:
    return value == "on"


async def record(conn: Any, on: bool, writers: str) -> bool:
    """Make SEARCH `on` or off the store's; returns what it was. Turned on, every event stored without its
    words (`words = ''`: search_text always writes at least two spaces) is indexed, in one transaction, once
    every batch that began before the change has ended (those read SEARCH as off: each batch reads it in
    its own transaction, batch.ALLOCATE). `writers`: the application name of the consumers' sessions.
    Turned off, the words stay until their events expire."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE consumer_state IN SHARE ROW EXCLUSIVE MODE")
        before = enabled(await conn.fetchval(_STATE, STATE_KEY))
        await conn.execute(_RECORD, STATE_KEY, "on" if on else "off")
    if on and not before:
        changed = await conn.fetchval("SELECT clock_timestamp()")
        for _ in range(_WAIT_STEPS):
            if not await conn.fetchval(_OLDER_BATCHES, writers, changed):
                break
            await asyncio.sleep(_WAIT_STEP)
        else:
            raise TimeoutError(f"a consumer's transaction begun before SEARCH=on still runs after {_WAITED}s")
        await _backfill(conn)
    return before


async def _backfill(conn: Any) -> None:
    async with conn.transaction():
        cursor = conn.cursor("SELECT seq, source, payload FROM events WHERE words = ''", prefetch=_CHUNK)
        chunk: list[tuple[int, str, str]] = []
        async for seq, source, payload in cursor:
            stored = json.loads(payload)
            chunk.append((seq, search_text(source, stored), " ".join(field_tokens(stored))))
            if len(chunk) == _CHUNK:
                await _update(conn, chunk)
                chunk = []
        if chunk:
            await _update(conn, chunk)


async def _update(conn: Any, chunk: list[tuple[int, str, str]]) -> None:
    await conn.execute(
        "UPDATE events SET words = u.w, terms = string_to_array(u.t, ' '), fields = string_to_array(u.f, ' ')"
        " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS u(s, w, t, f)"
        " WHERE events.seq = u.s",
        [c[0] for c in chunk],
        [c[1] for c in chunk],
        [" ".join(terms(c[1])) for c in chunk],
        [c[2] for c in chunk],
    )


def conditions(search: Search, args: list[Any]) -> str:
    """The page's conditions for `search`, its values appended to `args` (words hold no LIKE wildcards:
    only letters and digits)."""
    where = ""
    for phrase in search.phrases:
        args.append(sorted({term(w) for w in phrase}))
        where += f" AND terms <> '{{}}' AND terms @> ${len(args)}::text[]"  # <>: the partial index's
        args.append(f"% {' '.join(phrase)} %")
        where += f" AND words LIKE ${len(args)}"
    for tokens in search.fields:
        args.append(list(tokens))
        where += f" AND fields <> '{{}}' AND fields && ${len(args)}::text[]"
    return where
