"""The store suite runs every test against both backends, as one fixture (`backend`) parametrised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from store import Reader, Writer, open_reader, open_writer
from tests.harness.postgres import fresh_schema
from tests.harness.stores import Peek, PostgresPeek, SqlitePeek, StoreSettings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    db_path = tmp_path / "store" / "events.db"
    if request.param == "sqlite":
        return StoreSettings(db_path)
    database = request.getfixturevalue("postgres_database")
    return StoreSettings(db_path, fresh_schema(database))


@pytest.fixture
def peek(settings: StoreSettings) -> Peek:
    if settings.database_url:
        return PostgresPeek(settings.database_url)
    return SqlitePeek(settings.db_path)


@pytest.fixture
async def writer(settings: StoreSettings) -> AsyncIterator[Writer]:
    opened = await open_writer(settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def reader(settings: StoreSettings) -> AsyncIterator[Reader]:
    opened = open_reader(settings)
    try:
        yield opened
    finally:
        await opened.close()
