"""PostgreSQL's key buckets: competing writers seal buckets while both write and every key stays new exactly
once, a sealer stopped before its filter loses no duplicate and the next writer builds it, KEY_RETENTION
forgets whole buckets, and a batch's probe reads only the buckets its filters name. Buckets are made small
here so a test seals many."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contract.event import Event
from store import BatchResult, Expired, Retention, key_hash, open_reader
from store.postgres import PostgresWriter
from store.postgres import keys as keys_module
from tests.harness.postgres import fresh_schema
from tests.harness.stores import PostgresPeek, StoreSettings, counters
from tests.harness.waiting import eventually
from tests.store.test_retention import event

SMALL = 40
BUCKETS = "SELECT bucket, filter IS NOT NULL FROM key_buckets ORDER BY bucket"


@pytest.fixture(autouse=True)
def small_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "BUCKET_KEYS", SMALL)


@pytest.fixture
def settings(postgres_database: str, tmp_path: Path) -> StoreSettings:
    return StoreSettings(tmp_path / "events.db", fresh_schema(postgres_database))


@pytest.fixture
def url(settings: StoreSettings) -> str:
    assert settings.database_url is not None
    return settings.database_url


@pytest.fixture
async def writers(url: str) -> AsyncIterator[list[PostgresWriter]]:
    opened = [await PostgresWriter.open(url) for _ in range(2)]
    try:
        yield opened
    finally:
        for writer in opened:
            await writer.close()


async def bucket_rows(peek: PostgresPeek) -> list[tuple[int, bool]]:
    return [(int(b), bool(f)) for b, f in await peek.rows(BUCKETS)]


async def test_two_writers_sealing_while_both_write_store_each_key_exactly_once(
    writers: list[PostgresWriter], url: str
) -> None:
    peek = PostgresPeek(url)
    rng = random.Random(7)
    ids = [f"k-{i}" for i in range(600)]
    # Each writer sends every key once, in its own order, in batches of 25 (some repeated inside a batch):
    # every key arrives twice, from both, and the two race over the same keys as buckets seal.
    plans = []
    for _ in writers:
        order = ids[:]
        rng.shuffle(order)
        plans.append([order[i : i + 25] + order[i : i + 2] for i in range(0, len(order), 25)])

    async def run(writer: PostgresWriter, batches: list[list[str]]) -> None:
        for batch in batches:
            await writer.apply([[event(e) for e in batch]])

    await asyncio.gather(*(run(w, p) for w, p in zip(writers, plans, strict=True)))

    sent = sum(len(b) for p in plans for b in p)
    assert await counters(peek) == {
        "received": sent,
        "unique_processed": 600,
        "duplicate_dropped": sent - 600,
        "invalid": 0,
        "conflicts": 0,
    }
    assert await peek.rows("SELECT count(*), count(DISTINCT event_id) FROM events") == [(600, 600)]
    assert await peek.rows("SELECT count(*), count(DISTINCT key_hash) FROM event_keys") == [(600, 600)]
    buckets = await bucket_rows(peek)
    # Sealed as seqs ran past each bucket's 40 (seqs count a batch's first-seen keys, duplicates included):
    # every bucket but the open one has its filter, and every key is in a recorded bucket.
    assert len(buckets) >= 600 // SMALL // 2, buckets
    assert [has for _, has in buckets] == [True] * (len(buckets) - 1) + [False]
    holding = {int(r[0]) for r in await peek.rows("SELECT DISTINCT bucket FROM event_keys")}
    assert holding <= {b for b, _ in buckets} and len(holding) > 1

    # Every key again with another payload, from both writers: each is a duplicate and a conflict, found in
    # its sealed bucket through its filter (or in the open one).
    again = [[event(e, n=1) for e in ids[i : i + 50]] for i in range(0, 600, 50)]
    results: list[BatchResult] = []

    async def resend(writer: PostgresWriter, batches: list[list[Event]]) -> None:
        for batch in batches:
            results.append(await writer.apply([batch]))

    await asyncio.gather(resend(writers[0], again[0::2]), resend(writers[1], again[1::2]))
    assert sum(r.duplicate_dropped for r in results) == 600
    assert sum(r.conflicts for r in results) == 600
    assert sum(r.unique_processed for r in results) == 0


async def test_a_writer_whose_view_is_out_of_date_inserts_nothing_until_it_caught_up(
    writers: list[PostgresWriter], url: str
) -> None:
    """The seqs, a check of the writer's view and the insert go in one statement; a view another writer made
    stale (a bucket sealed, a setting recorded) inserts nothing there, and the batch goes the long way."""
    stale, sealer = writers
    peek = PostgresPeek(url)
    await stale.apply([[event("s-0")]])  # its view: bucket 0 open
    await stale.apply([[event("s-1")]])
    assert (stale._numbering.checked, stale._numbering.caught_up) == (1, 0)
    await sealer.apply([[event(f"a-{i}") for i in range(SMALL + 10)]])  # fills bucket 0: sealed, 1 opened
    assert await bucket_rows(peek) == [(0, True), (1, False)]

    # A stale insert would put "late" in sealed bucket 0, past its filter: a later copy would be stored again.
    result = await stale.apply([[event("a-0"), event("late")]])
    assert (result.unique_processed, result.duplicate_dropped) == (1, 1)
    assert (stale._numbering.checked, stale._numbering.caught_up) == (1, 1)
    where = "SELECT bucket FROM event_keys WHERE key_hash = $1"
    assert await peek.rows(where, key_hash("orders", "late")) == [(1,)]
    again = await sealer.apply([[event("late"), event("a-1")]])
    assert (again.unique_processed, again.duplicate_dropped) == (0, 2)

    await sealer.record_retention(Retention(events=timedelta(days=30), keys=timedelta(days=60)))
    checked = stale._numbering.checked
    after = await stale.apply([[event("s-0"), event("after")]])
    assert (after.unique_processed, after.duplicate_dropped) == (1, 1)
    assert (stale._numbering.checked, stale._numbering.caught_up) == (checked, 2)
    await stale.apply([[event("after-2")]])
    assert stale._numbering.checked == checked + 1
    assert await peek.rows("SELECT count(*), count(DISTINCT event_id) FROM events") == [(SMALL + 15,) * 2]


async def test_a_writer_whose_open_bucket_was_forgotten_meanwhile_takes_the_long_way_at_once(
    writers: list[PostgresWriter], url: str
) -> None:
    """A writer idle while its open bucket was sealed and then forgotten (KEY_RETENTION drops a sealed bucket
    whole) names a table that is gone: the batch is retried at once with the view read anew, not failed."""
    stale, sealer = writers
    peek = PostgresPeek(url)
    await stale.apply([[event("s-0")]])
    await stale.apply([[event("s-1")]])  # its view: bucket 0 open
    await sealer.apply([[event(f"a-{i}") for i in range(SMALL + 10)]])  # bucket 0 sealed, 1 opened
    conn = await sealer._connection()
    async with conn.transaction():  # as the sweep forgets a bucket (store/postgres/retention.py)
        await conn.execute("LOCK TABLE event_keys IN ACCESS EXCLUSIVE MODE")
        await conn.execute(f"DROP TABLE {keys_module.table(0)}")
        await conn.execute("DELETE FROM key_buckets WHERE bucket = 0")

    result = await stale.apply([[event("late"), event("late-2")]])
    assert (result.unique_processed, result.duplicate_dropped) == (2, 0)
    assert stale._numbering.checked == 1
    where = "SELECT bucket FROM event_keys WHERE key_hash = ANY($1::bytea[])"
    late = [key_hash("orders", "late"), key_hash("orders", "late-2")]
    assert await peek.rows(where, late) == [(1,), (1,)]
    assert (await stale.apply([[event("late")]])).duplicate_dropped == 1
    assert stale._numbering.checked == 2


async def test_a_sealer_stopped_before_its_filter_loses_no_duplicate_and_the_next_writer_builds_it(
    url: str, settings: StoreSettings
) -> None:
    peek = PostgresPeek(url)
    writer = await PostgresWriter.open(url)
    try:
        await writer.apply([[event(f"a-{i}") for i in range(30)]])
        # A sealer stopped between its switch and its filter: bucket 0 sealed, no filter.
        conn = await writer._connection()
        await keys_module.create_bucket(conn, 1)
        await conn.execute("INSERT INTO key_buckets (bucket, first_seq) VALUES (1, 30)")
        assert await bucket_rows(peek) == [(0, False), (1, False)]

        result = await writer.apply([[event(f"a-{i}") for i in range(0, 30, 3)] + [event("b-0")]])
        assert (result.unique_processed, result.duplicate_dropped) == (1, 10)
    finally:
        await writer.close()

    second = await PostgresWriter.open(url)
    try:
        assert await bucket_rows(peek) == [(0, True), (1, False)]
        result = await second.apply([[event(f"a-{i}") for i in range(30)] + [event("b-0"), event("b-1")]])
        assert (result.unique_processed, result.duplicate_dropped) == (1, 31)
        assert await peek.rows("SELECT bucket, count(*) FROM event_keys GROUP BY 1 ORDER BY 1") == [
            (0, 30),
            (1, 2),
        ]
    finally:
        await second.close()


async def test_key_retention_forgets_whole_buckets_and_a_forgotten_key_is_stored_again_and_read_newest(
    writers: list[PostgresWriter], url: str, settings: StoreSettings
) -> None:
    writer, peek, reader = writers[0], PostgresPeek(url), open_reader(settings)
    try:
        await writer.record_retention(Retention(keys=timedelta(seconds=3)))
        for start in range(0, 120, 20):
            await writer.apply([[event(f"old-{i}") for i in range(start, start + 20)]])
        sealed = [b for b, has in await bucket_rows(peek) if has]
        assert len(sealed) >= 2

        async def forgotten() -> bool:
            return await reader.event_row("orders", "old-119") is None

        await eventually(forgotten, timeout=15, message="the old keys forgotten")
        # Forgotten, not swept yet: a re-send is stored again into the open bucket, and read back newest.
        result = await writer.apply([[event("old-0", n=2)]])
        assert result.unique_processed == 1
        row = await reader.event_row("orders", "old-0")
        assert row is not None and not isinstance(row, Expired) and row[5] == '{"n":2}'
        held = await peek.rows(
            "SELECT bucket FROM event_keys WHERE key_hash = $1", key_hash("orders", "old-0")
        )
        assert len(held) == 2 and held[0][0] != held[1][0]

        done = await writer.sweep()

        # The sealed buckets left whole; the open bucket's old keys one by one; the fresh re-send stays.
        assert done.keys == 120
        left = await bucket_rows(peek)
        assert len(left) == 1 and left[0][0] > max(sealed)
        for bucket in sealed:
            assert await peek.rows("SELECT to_regclass($1)::text", keys_module.table(bucket)) == [(None,)]
        assert await peek.rows("SELECT count(*) FROM event_keys") == [(1,)]
        assert await peek.rows("SELECT keys FROM sweep_totals") == [(120,)]
    finally:
        await reader.close()


async def test_a_batch_probes_only_the_buckets_its_filters_name(
    writers: list[PostgresWriter], url: str
) -> None:
    writer, peek = writers[0], PostgresPeek(url)
    for start in range(0, 400, 50):
        await writer.apply([[event(f"p-{i}") for i in range(start, start + 50)]])
    buckets = await bucket_rows(peek)
    assert len(buckets) >= 8 and all(has for _, has in buckets[:-1])

    hashes = sorted([key_hash("orders", "p-5"), key_hash("orders", "fresh-1"), key_hash("orders", "fresh-2")])
    conn = Tracing(await writer._connection())

    found = await writer._keys.probe(conn, hashes)

    assert list(found) == [key_hash("orders", "p-5")]
    [(query, probed, wanted)] = conn.calls
    # p-5's bucket, and at most a few others its filters let through by chance: not every sealed bucket.
    holder = await peek.rows("SELECT bucket FROM event_keys WHERE key_hash = $1", key_hash("orders", "p-5"))
    assert holder[0][0] in probed and len(probed) <= 3, (probed, buckets)
    assert key_hash("orders", "p-5") in wanted
    plan = await peek.rows(f"EXPLAIN {query}", probed, wanted)
    scanned = {m for (line,) in plan for m in re.findall(r" on (event_keys_b\d+)", line)}
    assert scanned == {keys_module.table(b) for b in probed}, plan


class Tracing:
    """A connection that records each fetch's statement and arguments."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.calls: list[tuple[Any, ...]] = []

    async def fetch(self, query: str, *args: Any) -> Any:
        self.calls.append((query, *args))
        return await self._conn.fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> Any:  # the probe's SET LOCAL: not a fetch
        return await self._conn.execute(query, *args)


async def test_a_batch_stalled_mid_transaction_delays_a_seal_not_the_other_batches(
    writers: list[PostgresWriter], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A consumer stopped mid-batch (SIGSTOP) holds the buckets' shared lock: a seal gives up after
    # SWITCH_WAIT, the batches queued behind it go on, and the bucket is sealed once the stall ends.
    monkeypatch.setattr(keys_module, "SEAL_RETRY", 0.5)
    writer, peek = writers[0], PostgresPeek(url)
    await writer.apply([[event(f"s-{i}") for i in range(10)]])
    stalled = await asyncpg.connect(url)
    try:
        async with stalled.transaction():
            await stalled.execute(keys_module.LOCK_SHARED)
            took = []
            for start in range(10, 130, 20):
                began = time.monotonic()
                await writer.apply([[event(f"s-{i}") for i in range(start, start + 20)]])
                took.append(time.monotonic() - began)
            assert await bucket_rows(peek) == [(0, False)]
            # One batch waited out the switch; none waited for the stall itself.
            assert max(took) < keys_module.SWITCH_WAIT + 2, took
    finally:
        await stalled.close()

    async def sealed() -> bool:
        await writer.apply([[event(f"t-{time.monotonic()}")]])
        return len(await bucket_rows(peek)) > 1

    await eventually(sealed, timeout=15, message="the bucket sealed after the stall")
    assert (await bucket_rows(peek))[0] == (0, True)
    result = await writer.apply([[event(f"s-{i}") for i in range(130)]])
    assert (result.unique_processed, result.duplicate_dropped) == (0, 130)
