"""The PostgreSQL backend alone: concurrent writers, the paging watermark, durability, bad configuration."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from asyncpg.transaction import Transaction

from contract.event import Event
from store import BatchResult, Message, StoreConfigError, StoreError, open_reader, open_writer, utc_now
from store.postgres import WRITER_APPLICATION, PostgresWriter
from tests.harness.postgres import fresh_schema, with_database
from tests.harness.private_postgres import PostgresError, PrivatePostgres
from tests.harness.stores import PostgresPeek, StoreSettings, counters, stored_keys
from tests.store.test_writer import event


@pytest.fixture
def settings(postgres_database: str, tmp_path: Path) -> StoreSettings:
    return StoreSettings(tmp_path / "events.db", fresh_schema(postgres_database))


@pytest.fixture
def url(settings: StoreSettings) -> str:
    assert settings.database_url is not None
    return settings.database_url


@pytest.fixture
async def writers(settings: StoreSettings) -> AsyncIterator[list[PostgresWriter]]:
    opened = [await PostgresWriter.open(str(settings.database_url)) for _ in range(3)]
    try:
        yield opened
    finally:
        for writer in opened:
            await writer.close()


async def test_the_same_key_in_concurrent_batches_is_stored_once_and_counted_once_as_a_duplicate(
    writers: list[PostgresWriter], url: str
) -> None:
    key = event("same", amount=1)
    results = await asyncio.gather(*(w.apply([[key], [event(f"own-{i}")]]) for i, w in enumerate(writers)))

    assert sorted(r.unique_processed for r in results) == [1, 1, 2]
    assert sum(r.duplicate_dropped for r in results) == 2
    assert await counters(PostgresPeek(url)) == {
        "received": 6,
        "unique_processed": 4,
        "duplicate_dropped": 2,
        "invalid": 0,
        "conflicts": 0,
    }


async def test_competing_writers_with_overlapping_keys_in_opposite_orders_keep_every_count_exact(
    writers: list[PostgresWriter], url: str
) -> None:
    rng = random.Random(3)
    keys = [f"k{i}" for i in range(300)]
    sent: list[Event] = []

    def batch() -> list[Message]:
        chosen = rng.sample(keys, 60)
        if rng.random() < 0.5:
            chosen.reverse()
        out: list[Message] = []
        for name in chosen:
            item = event(name, topic=f"t{int(name[1:]) % 5}", v=rng.randrange(2))
            sent.append(item)
            out.append([item])
        out.append(None)
        return out

    total = BatchResult()
    for _ in range(15):
        for result in await asyncio.gather(*(w.apply(batch()) for w in writers)):
            total.add(result)

    unique = {item.key() for item in sent}
    peek = PostgresPeek(url)
    final = await counters(peek)
    assert final == {
        "received": len(sent) + 45,
        "unique_processed": len(unique),
        "duplicate_dropped": len(sent) - len(unique),
        "invalid": 45,
        "conflicts": total.conflicts,
    }
    assert final["received"] == total.received
    assert await stored_keys(peek) == unique
    # Each conflict is a re-send whose content differs from the copy that is stored.
    stored = {(r[0], r[1]): r[2] for r in await peek.rows("SELECT topic, event_id, payload FROM events")}
    expected_conflicts = sum(item.payload_json() != stored[item.key()] for item in sent)
    assert final["conflicts"] == expected_conflicts


async def test_a_page_never_steps_past_a_batch_that_is_still_committing(
    writers: list[PostgresWriter], settings: StoreSettings, url: str
) -> None:
    slow = await asyncpg.connect(url, server_settings={"application_name": WRITER_APPLICATION})
    reader = open_reader(settings)
    try:
        await writers[0].apply([[event("before")]])
        transaction = slow.transaction()
        await transaction.start()
        (seq,) = [r[0] for r in await slow.fetch("SELECT eventagg_allocate(1)")]
        await slow.execute(
            "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
            " VALUES ($1, 'orders', 'slow', '2026-11-22T10:15:00Z', 'test', '{}', $2)",
            seq,
            utc_now(),  # a moment the writers' partitions cover
        )
        await writers[1].apply([[event("after")]])  # a later seq, committed first

        page = await reader.page(None, 10, 0)
        assert [row[2] for row in page.rows] == ["before"], "a page must stop below the uncommitted seq"
        assert await reader.event_row("orders", "after") is not None, "lookups by key see every commit"

        await transaction.commit()
        page = await reader.page(None, 10, 0)
        assert [row[2] for row in page.rows] == ["before", "slow", "after"]
    finally:
        await slow.close()
        await reader.close()


async def test_a_page_never_steps_past_a_committing_batch_while_a_newer_one_is_also_running(
    writers: list[PostgresWriter], settings: StoreSettings, url: str
) -> None:
    sessions = [
        await asyncpg.connect(url, server_settings={"application_name": WRITER_APPLICATION}) for _ in range(2)
    ]
    reader = open_reader(settings)

    async def begin(session: asyncpg.Connection, event_id: str) -> Transaction:
        transaction = session.transaction()
        await transaction.start()
        (seq,) = [r[0] for r in await session.fetch("SELECT eventagg_allocate(1)")]
        await session.execute(
            "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)"
            " VALUES ($1, 'orders', $2, '2026-11-22T10:15:00Z', 'test', '{}', $3)",
            seq,
            event_id,
            utc_now(),  # a moment the writers' partitions cover
        )
        return transaction

    try:
        await writers[0].apply([[event("before")]])
        slow = await begin(sessions[0], "slow")
        await writers[1].apply([[event("after")]])  # a later seq, committed first
        # A newer writer still running: its id is at or above the snapshot's xmax (one past the newest
        # finished transaction), in the same epoch.
        newer = await begin(sessions[1], "newer")
        page = await reader.page(None, 10, 0)
        assert [row[2] for row in page.rows] == ["before"], "a page must stop below the uncommitted seq"

        await slow.commit()
        await newer.commit()
        page = await reader.page(None, 10, 0)
        assert [row[2] for row in page.rows] == ["before", "slow", "after", "newer"]
    finally:
        for session in sessions:
            await session.close()
        await reader.close()


async def test_a_writer_records_synchronous_commit_and_fsync_and_warns_when_commits_are_not_durable(
    url: str, settings: StoreSettings, caplog: pytest.LogCaptureFixture
) -> None:
    off = f"{url}&synchronous_commit=off"
    writer = await open_writer(StoreSettings(settings.db_path, off))
    reader = open_reader(settings)
    try:
        await writer.record_start("2026-11-22T10:00:00Z")
        durability = (await reader.snapshot()).durability
    finally:
        await writer.close()
        await reader.close()

    assert (durability.backend, durability.durable) == ("postgresql", False)
    assert durability.settings == {"synchronous_commit": "off", "fsync": "on"}
    assert durability.warning is not None
    assert "synchronous_commit=off" in durability.warning
    assert any("STORE NOT DURABLE" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# --- bad configuration: one line naming DATABASE_URL ------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    assert "DATABASE_URL" in text
    return text


async def test_an_unknown_url_scheme_is_refused_before_anything_connects(tmp_path: Path) -> None:
    with pytest.raises(StoreConfigError) as caught:
        await open_writer(StoreSettings(tmp_path / "e.db", "mysql://root:secret@db/events"))
    text = one_line(caught.value)
    assert "postgresql://" in text
    assert "secret" not in text
    with pytest.raises(StoreConfigError):
        open_reader(StoreSettings(tmp_path / "e.db", "mysql://db/events"))


async def test_an_unreachable_database_is_a_store_error_to_retry(tmp_path: Path) -> None:
    settings = StoreSettings(tmp_path / "e.db", "postgresql://postgres:secret@127.0.0.1:1/events")
    with pytest.raises(StoreError) as caught:
        await open_writer(settings)
    assert not isinstance(caught.value, StoreConfigError)
    text = one_line(caught.value)
    assert "cannot reach the database" in text
    assert "secret" not in text
    reader = open_reader(settings)
    try:
        with pytest.raises(StoreError, match="cannot reach the database"):
            await reader.check()
    finally:
        await reader.close()


async def test_a_database_that_does_not_exist_is_a_configuration_error(postgres_database: str) -> None:
    missing = with_database(postgres_database, f"eventagg_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreConfigError) as caught:
        await open_writer(StoreSettings(Path("unused.db"), missing))
    assert "does not exist" in one_line(caught.value)


@pytest.fixture
def unprivileged(postgres_database: str) -> Iterator[str]:
    """A role that may connect but not create tables in the schema it is given."""
    role = f"eventagg_ro_{uuid.uuid4().hex[:8]}"
    url = fresh_schema(postgres_database)

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(postgres_database)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    schema = url.rsplit("search_path=", 1)[1]
    asyncio.run(admin(f"CREATE ROLE {role} LOGIN"))
    asyncio.run(admin(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
    try:
        yield url.replace("postgresql://postgres@", f"postgresql://{role}@")
    finally:
        asyncio.run(admin(f"DROP OWNED BY {role}"))
        asyncio.run(admin(f"DROP ROLE {role}"))


async def test_no_permission_to_create_tables_is_a_configuration_error(unprivileged: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        await open_writer(StoreSettings(Path("unused.db"), unprivileged))
    assert "no permission to create" in one_line(caught.value)


async def test_a_schema_the_role_cannot_use_is_a_configuration_error(unprivileged: str) -> None:
    elsewhere = unprivileged.rsplit("search_path=", 1)[0] + "search_path=nowhere_at_all"
    with pytest.raises(StoreConfigError) as caught:
        await open_writer(StoreSettings(Path("unused.db"), elsewhere))
    assert "no schema to create" in one_line(caught.value)


def test_a_wrong_password_is_a_configuration_error() -> None:
    try:
        server = PrivatePostgres()
    except PostgresError as exc:
        pytest.skip(f"no private PostgreSQL server: {exc}")
    try:
        hba = server.data / "pg_hba.conf"
        hba.write_text("host all eventagg_pw 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        server.start()
        server.psql("CREATE ROLE eventagg_pw LOGIN PASSWORD 'right'")
        wrong = f"postgresql://eventagg_pw:wrong@127.0.0.1:{server.port}/postgres"

        with pytest.raises(StoreConfigError) as caught:
            asyncio.run(open_writer(StoreSettings(Path("unused.db"), wrong)))
        text = one_line(caught.value)
        assert "wrong password" in text
        assert ":wrong@" not in text
    finally:
        server.stop()
