"""`python -m bench.store_apply`: the store's batch apply alone, without broker or processes.

Times the same workload (single-event messages in batches, a share of them verbatim re-sends) through:
- `per-event`: the first release's apply (one INSERT per event, one SELECT per duplicate) on a sqlite3
  connection driven from a worker thread, as its StoreWorker did; kept here as the reference;
- `set-based`: store.sqlite.SqliteWriter (a handful of statements per batch, one call on its thread);
- with `--postgres URL`: store.postgres.PostgresWriter (asyncpg). (psycopg 3 was compared on the statements
  of schema 6 and not kept: asyncpg was the faster driver.)
Each mode runs `--rounds` times on a fresh store (empty, or a copy of one pre-filled with `--prefill`
events); the table gives the median. Ratios only mean something within one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import bigstore
from contract.event import Event, content_hash
from contract.schema import COUNTERS
from store.base import BatchResult, Message
from store.clock import utc_now
from store.sqlite import SqliteWriter
from store.sqlite.schema import MIGRATIONS

Batches = list[list[Message]]


def workload(events: int, batch: int, dup_share: float, seed: int) -> Batches:
    rng = random.Random(seed)
    sent: list[Event] = []
    messages: list[Message] = []
    for i in range(events):
        if sent and rng.random() < dup_share:
            item = sent[rng.randrange(len(sent))]
        else:
            item = Event(
                topic=f"demo.{('orders', 'payments', 'auth', 'search')[i % 4]}",
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                timestamp="2026-11-22T10:15:00Z",
                source=f"loadgen-{i % 4}",
                payload={
                    "seq": i,
                    "level": "info",
                    "message": f"event {i}",
                    "latency_ms": rng.randrange(2000),
                },
            )
            sent.append(item)
        messages.append([item])
    return [messages[i : i + batch] for i in range(0, len(messages), batch)]


class PerEventStore:
    """The first release's Store.apply, verbatim in its SQL: the reference the set-based apply replaces."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def apply(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        new_per_topic: Counter[str] = Counter()
        received_at = utc_now()
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for events in messages:
                if not isinstance(events, list):
                    result.invalid += 1
                    result.received += 1
                    continue
                for item in events:
                    result.received += 1
                    cur.execute(
                        "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at)"
                        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, event_id) DO NOTHING",
                        (
                            item.topic,
                            item.event_id,
                            item.timestamp,
                            item.source,
                            item.payload_json(),
                            received_at,
                        ),
                    )
                    if cur.rowcount == 1:
                        result.unique_processed += 1
                        new_per_topic[item.topic] += 1
                        continue
                    result.duplicate_dropped += 1
                    stored = cur.execute(
                        "SELECT timestamp, source, payload FROM events WHERE topic = ? AND event_id = ?",
                        item.key(),
                    ).fetchone()
                    if content_hash(stored[0], stored[1], json.loads(stored[2])) != item.content_hash():
                        result.conflicts += 1
            cur.executemany(
                "UPDATE counters SET value = value + ? WHERE name = ?",
                [(getattr(result, name), name) for name in COUNTERS if getattr(result, name)],
            )
            cur.executemany(
                "INSERT INTO topics (topic, count) VALUES (?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count",
                new_per_topic.items(),
            )
            cur.execute(
                "INSERT INTO consumer_state (key, value) VALUES ('last_commit_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (received_at,),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return result


async def run_per_event(path: Path, batches: Batches) -> float:
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()

    def open_conn() -> sqlite3.Connection:
        # The first release's schema (its dedup key a UNIQUE index on the events table), WAL and the pragmas
        # the writer sets.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA wal_autocheckpoint = 20000")
        return conn

    conn = await loop.run_in_executor(executor, open_conn)
    store = PerEventStore(conn)
    started = time.perf_counter()
    for batch in batches:
        await loop.run_in_executor(executor, store.apply, batch)
    elapsed = time.perf_counter() - started
    await loop.run_in_executor(executor, conn.close)
    executor.shutdown()
    return elapsed


async def run_set_based(path: Path, batches: Batches) -> float:
    writer = await SqliteWriter.open(path)
    started = time.perf_counter()
    for batch in batches:
        await writer.apply(batch)
    elapsed = time.perf_counter() - started
    await writer.close()
    return elapsed


async def run_asyncpg(url: str, batches: Batches) -> float:
    from store.postgres import PostgresWriter

    writer = await PostgresWriter.open(url)
    started = time.perf_counter()
    for batch in batches:
        await writer.apply(batch)
    elapsed = time.perf_counter() - started
    await writer.close()
    return elapsed


async def fresh_schema(url: str, prefill: int) -> str:
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()
    scoped = f"{url}{'&' if '?' in url else '?'}search_path={name}"
    if prefill:
        from bench.bigstore_postgres import fill

        await fill(scoped, prefill, tombstones=False)
    return scoped


async def drop_schema(url: str, scoped: str) -> None:
    import asyncpg

    name = scoped.rsplit("search_path=", 1)[1]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()


def _remove_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def main(args: argparse.Namespace, work: Path, template: Path) -> None:
    batches = workload(args.events, args.batch, args.dup, args.seed)
    events = sum(len(b) for b in batches)
    sqlite_modes: dict[str, Callable[[Path, Batches], Awaitable[float]]] = {
        "per-event": run_per_event,
        "set-based": run_set_based,
    }
    pg_modes: dict[str, Callable[[str, Batches], Awaitable[float]]] = {
        "asyncpg": run_asyncpg,
    }
    times: dict[str, list[float]] = {}
    try:
        for round_ in range(args.rounds):
            for mode, fn in sqlite_modes.items():  # interleaved, so drift in the machine's load hits both
                if args.only and mode not in args.only:
                    continue
                path = work / f"{mode}-{round_}.db"
                if args.prefill:
                    shutil.copy(template, path)
                times.setdefault(mode, []).append(await fn(path, batches))
                _remove_store(path)
            if args.postgres:
                for mode, pgfn in pg_modes.items():
                    if args.only and mode not in args.only:
                        continue
                    scoped = await fresh_schema(args.postgres, args.prefill)
                    try:
                        times.setdefault(mode, []).append(await pgfn(scoped, batches))
                    finally:
                        await drop_schema(args.postgres, scoped)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"events={events} batches={len(batches)} batch={args.batch} dup={args.dup:g} prefill={args.prefill} "
        f"rounds={args.rounds}"
    )
    reference = statistics.median(times[next(iter(times))])
    for mode, values in times.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.2f}" for v in values)
        print(
            f"{mode:10s} median {median:7.2f}s  {events / median:9.0f} events/s  "
            f"{reference / median:5.2f}x first  runs: {runs}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256, help="single-event messages per batch")
    parser.add_argument(
        "--dup", type=float, default=0.2, help="share of messages that re-send an earlier event"
    )
    parser.add_argument("--prefill", type=int, default=0, help="events already in the store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", help="a PostgreSQL URL: also time the asyncpg writer")
    parser.add_argument("--only", nargs="*", help="modes to run (per-event set-based asyncpg)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="store-apply-"))
    template = work / "template.db"
    if args.prefill:
        bigstore.build(template, args.prefill)  # before the loop: it runs one of its own
    asyncio.run(main(args, work, template))


if __name__ == "__main__":
    cli()
