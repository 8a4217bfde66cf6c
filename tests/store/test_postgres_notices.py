"""PostgreSQL's commit notices from the batch's own statement: one per commit, naming every receipt the
batch marked, with figures for exactly those it inserted, also when a receipt was stored before or every slot
was held."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from contract.commits import Notice, decode
from store.postgres import SLOTS, PostgresWriter
from store.postgres.notices import CHANNEL
from tests.harness.postgres import fresh_schema
from tests.harness.stores import StoreSettings
from tests.store.test_postgres_counters import open_batch, waiting_on_held_slots
from tests.store.test_writer import event


@pytest.fixture
def url(postgres_database: str, tmp_path: Path) -> str:
    found = StoreSettings(tmp_path / "events.db", fresh_schema(postgres_database)).database_url
    assert found is not None
    return found


@pytest.fixture
async def writer(url: str) -> AsyncIterator[PostgresWriter]:
    opened = await PostgresWriter.open(url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def heard(url: str) -> AsyncIterator[asyncio.Queue[Notice | None]]:
    """The notices a listening session hears, in commit order."""
    queue: asyncio.Queue[Notice | None] = asyncio.Queue()
    conn = await asyncpg.connect(url)
    await conn.add_listener(CHANNEL, lambda *args: queue.put_nowait(decode(args[3].encode())))
    try:
        yield queue
    finally:
        await conn.close()


async def next_notice(heard: asyncio.Queue[Notice | None]) -> Notice | None:
    return await asyncio.wait_for(heard.get(), 10)


async def test_a_commit_sends_one_notice_with_figures_only_for_the_receipts_it_inserted(
    writer: PostgresWriter, heard: asyncio.Queue[Notice | None]
) -> None:
    await writer.apply([[event("a"), event("b", topic="auth")]], ["r1"])
    assert await next_notice(heard) == Notice(("r1",), 2, {"r1": (2, 0)})

    # r1 again (a redelivery: its receipt keeps the first commit's figures) beside a fresh r3.
    again = await writer.apply(
        [[event("a"), event("b", topic="auth")], [event("c"), event("a")]], ["r1", "r3"]
    )
    assert again.receipts == [("r3", 1, 1)]
    notice = await next_notice(heard)
    assert notice == Notice(("r1", "r3"), 1, {"r3": (1, 1)})

    # Nothing else was sent for that commit: the next notice heard is the next commit's.
    await writer.apply([[event("d")]], ["r4"])
    assert await next_notice(heard) == Notice(("r4",), 1, {"r4": (1, 0)})
    assert heard.empty()


async def test_with_every_slot_held_the_notice_comes_with_the_commit_that_waited(
    writer: PostgresWriter, url: str, heard: asyncio.Queue[Notice | None]
) -> None:
    held = [await open_batch(url, f"t{i:02}") for i in range(SLOTS)]
    watcher = await asyncpg.connect(url)
    try:
        applying = asyncio.ensure_future(writer.apply([[event("late", topic="t00")]], ["waited"]))
        await waiting_on_held_slots(watcher, {conn.get_server_pid() for conn, _ in held})
        assert not applying.done() and heard.empty(), "no notice before the batch commits"
        for _, transaction in held:
            await transaction.commit()
        assert (await asyncio.wait_for(applying, 10)).receipts == [("waited", 1, 0)]
    finally:
        await watcher.close()
        for conn, _ in held:
            await conn.close()

    assert await next_notice(heard) == Notice(("waited",), 1, {"waited": (1, 0)})
    await writer.apply([[event("after")]], ["after"])
    assert await next_notice(heard) == Notice(("after",), 1, {"after": (1, 0)})
    assert heard.empty()
