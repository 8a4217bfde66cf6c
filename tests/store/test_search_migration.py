"""A store of an earlier schema, migrated, then SEARCH turned on: a search finds the events it held, on both
backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.event import Event
from store import Filters, open_reader
from store.postgres import PostgresWriter
from store.search import parse
from store.sqlite import SqliteWriter
from tests.harness.postgres import fresh_schema
from tests.harness.stores import StoreSettings
from tests.store.test_postgres_retention import store_of_schema_6
from tests.store.test_sqlite import first_release_store


def new(event_id: str) -> Event:
    return Event(
        topic="zeta", event_id=event_id, timestamp="2026-01-01T00:00:00Z", source="new", payload={"n": 3}
    )


async def ids(settings: StoreSettings, q: str | None, pairs: list[tuple[str, str]]) -> list[str]:
    reader = open_reader(settings)
    try:
        page = await reader.page(None, 100, 0, filters=Filters(search=parse(q, pairs)))
    finally:
        await reader.close()
    return [f"{row[1]}/{row[2]}" for row in page.rows]


async def test_a_sqlite_store_of_an_earlier_schema_is_indexed_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first_release_store(path)  # three events from source "old", payloads {"n": 1}, {"n": 2}, {"n": 3}

    writer = await SqliteWriter.open(path)
    try:
        await writer.record_search(True)  # indexes the events the migrated store holds
        await writer.apply([[new("new")]])
    finally:
        await writer.close()

    settings = StoreSettings(path)
    assert await ids(settings, "old", []) == ["zeta/1", "auth/1", "zeta/2"]
    assert await ids(settings, None, [("n", "3")]) == ["zeta/2", "zeta/new"]
    assert await ids(settings, "new", [("n", "3")]) == ["zeta/new"]


@pytest.fixture
def url(postgres_database: str) -> str:
    return fresh_schema(postgres_database)


async def test_a_postgres_store_of_an_earlier_schema_is_indexed_when_migrated(
    url: str, tmp_path: Path
) -> None:
    await store_of_schema_6(url, 3000)  # source "s", payloads {"n": i}

    writer = await PostgresWriter.open(url)
    try:
        await writer.record_search(True)  # indexes the events the migrated store holds
        await writer.apply([[new("new")]])
    finally:
        await writer.close()

    settings = StoreSettings(tmp_path / "unused.db", url)
    assert await ids(settings, None, [("n", "3")]) == ["auth/e-3", "zeta/new"]
    assert await ids(settings, "s", [("n", "2999")]) == ["orders/e-2999"]
    assert await ids(settings, "new", []) == ["zeta/new"]
