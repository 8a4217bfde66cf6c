"""Search is served by its indexes: FTS5 yields a page's seqs in order on SQLite (EXPLAIN QUERY PLAN), and
on PostgreSQL the planner takes the word or the field index for a selective search and walks seq order
for a frequent one, never sorting it (EXPLAIN)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from contract.event import Event
from store import Filters, open_writer
from store.postgres.reader import page_query as postgres_page
from store.search import parse
from store.sqlite.keys import NEWEST_SEQ
from store.sqlite.reader import page_query as sqlite_page
from tests.harness.postgres import fresh_schema
from tests.harness.stores import StoreSettings


def event(n: int) -> Event:
    return Event(
        topic=f"t{n % 5}",
        event_id=f"e{n}",
        timestamp="2026-11-22T10:15:00Z",
        source=f"s{n % 4}",
        payload={
            "message": f"request w{n % 1000} took long",
            "common": "yes" if n % 10 == 0 else "no",
            "n": n,
        },
    )


SEARCHES = [
    ("w17", []),
    ('"w17 took"', []),
    (None, [("n", "5")]),
    ("long", [("common", "yes")]),
]


async def test_every_search_is_served_by_the_fts5_index_in_seq_order_on_sqlite(tmp_path: Path) -> None:
    settings = StoreSettings(tmp_path / "events.db")
    writer = await open_writer(settings)
    await writer.record_search(True)
    await writer.apply([[event(n) for n in range(200)]])
    await writer.close()
    conn = sqlite3.connect(settings.db_path)
    try:
        for q, pairs in SEARCHES:
            for topic in (None, "t1"):
                for source in (None, "s1"):
                    for since in (None, "2026-01-01T00:00:00.000000Z"):
                        for descending in (False, True):
                            filters = Filters(source=source, since=since, search=parse(q, pairs))
                            sql, params = sqlite_page(topic, 100, 0, descending, filters, (0, NEWEST_SEQ))
                            steps = [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
                            where = f"{q} {pairs} {topic} {filters} {descending}: {steps}"
                            assert steps[0].startswith("SCAN events_search VIRTUAL TABLE INDEX"), where
                            assert steps[1:] == ["SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"], where
    finally:
        conn.close()


@pytest.fixture
def url(postgres_database: str) -> str:
    return fresh_schema(postgres_database)


async def test_postgres_plans_a_selective_search_on_its_index_and_a_frequent_one_in_seq_order(
    url: str, tmp_path: Path
) -> None:
    writer = await open_writer(StoreSettings(tmp_path / "events.db", url))
    await writer.record_search(True)
    for start in range(0, 20_000, 2000):
        await writer.apply([[event(n) for n in range(start, start + 2000)]])
    await writer.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "VACUUM ANALYZE events"
        )  # as autovacuum does: statistics, GIN pending lists merged

        async def plan(q: str | None, pairs: list[tuple[str, str]], topic: str | None, desc: bool) -> str:
            after = NEWEST_SEQ if desc else 0
            sql, args = postgres_page(
                topic, 100, after, desc, Filters(search=parse(q, pairs)), "9" * 12, None
            )
            return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}", *args))

        for desc in (False, True):
            for topic in (None, "t1"):
                assert "_terms_idx" in await plan("w17", [], topic, desc)
                assert "_terms_idx" in await plan('"w17 took"', [], topic, desc)
                assert "_fields_idx" in await plan(None, [("n", "5")], topic, desc)
            # A tenth of the events match: pages walk seq order and stop at the page's end, as unfiltered.
            frequent = await plan("long", [("common", "yes")], None, desc)
            assert "_seq_idx" in frequent and "Sort" not in frequent, frequent
    finally:
        await conn.close()
