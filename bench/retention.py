"""The retention scenario: a steady stream for minutes under a short RETENTION; does the store level off?

The consumer runs with RETENTION and a short RETENTION_SWEEP_INTERVAL, the api beside it, and bench/steady.py
publishes at a fixed rate (20% re-sends, most of them of events long expired) for `Steady.seconds`. Every
`sample_every` seconds the scenario reads /stats: the store's size on disk (`store_size_bytes`; on SQLite the
file plus its -wal, which it also stats itself), `received`, the events stored, the queue's depth, and the
consumer's CPU time from /proc. Once the time of the first third has passed, as much expires as arrives, so
from there the size must stay put (target: at the end at most 1.2x its size after the first third) and so
must the ingest rate and the consumer's CPU per event (a cost that grew with the store's age would show).

On PostgreSQL the same, in a throwaway database; a consumer that refuses RETENTION there (or an api that
reports no retention or size) makes the repetition a skip, with the reason, not a failure.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.broker import BenchError
from bench.child import Child
from bench.cpu import cpu_seconds
from bench.postgres import ThrowawayDatabase
from bench.trial import Run, ScenarioSkipped, why

if TYPE_CHECKING:
    from bench.scenarios import Context

MB = 1_000_000
THIRDS = 3


@dataclass(frozen=True, slots=True)
class Steady:
    """The stream and the retention it runs under (seconds)."""

    seconds: float = 600.0
    rate: float = 1000.0
    retention: float = 60.0
    sweep_interval: float = 5.0
    sample_every: float = 5.0
    # Twice RETENTION by default: a re-send up to two minutes late is still a duplicate, and the store is
    # bounded. None keeps keys forever: the store then grows by its tombstones (`--key-retention 0`).
    key_retention: float | None = 120.0

    def consumer_env(self) -> dict[str, str]:
        env = {"RETENTION": f"{self.retention:g}s", "RETENTION_SWEEP_INTERVAL": f"{self.sweep_interval:g}"}
        if self.key_retention is not None:
            env["KEY_RETENTION"] = f"{self.key_retention:g}s"
        return env


FULL_STEADY = Steady()
# Long enough for a few expiries (the first third is twice the retention), nothing more: it checks the code
# path in the suite (tests/test_bench.py), where every second counts.
QUICK_STEADY = Steady(seconds=24.0, retention=4.0, sweep_interval=1.0, sample_every=1.0, key_retention=8.0)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall clock
    received: int
    unique: int
    stored: int
    size: int  # /stats store_size_bytes
    queued: int
    consumer_cpu: float
    file_size: int | None = None  # SQLite only: the file and its -wal, as this process sees them
    wal_size: int | None = None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _sample(client: httpx.AsyncClient, run: Run, consumer: Child, sqlite: bool) -> Sample:
    response = await client.get("/stats")
    if response.status_code != 200:
        raise BenchError(f"GET /stats: HTTP {response.status_code} {response.text[:200]}")
    stats: dict[str, Any] = response.json()
    wal = _file_size(run.db_path.with_name(run.db_path.name + "-wal")) if sqlite else None
    return Sample(
        at=time.time(),
        received=int(stats["received"]),
        unique=int(stats["unique_processed"]),
        stored=int(stats["stored_events"]),
        size=int(stats["store_size_bytes"]),
        queued=int((stats.get("queue") or {}).get("messages") or 0),
        consumer_cpu=cpu_seconds(consumer.process.pid) or 0.0,
        file_size=_file_size(run.db_path) + (wal or 0) if sqlite else None,
        wal_size=wal,
    )


def _at(samples: list[Sample], moment: float, field: str) -> float:
    """A figure at `moment`, interpolated linearly between the samples around it."""
    before = [s for s in samples if s.at <= moment]
    after = [s for s in samples if s.at >= moment]
    if not before or not after:
        raise BenchError(f"no samples around {moment:.1f} to interpolate {field} from")
    a, b = before[-1], after[0]
    va, vb = float(getattr(a, field)), float(getattr(b, field))
    return va if b.at == a.at else va + (vb - va) * (moment - a.at) / (b.at - a.at)


def _first_from(samples: list[Sample], moment: float) -> Sample:
    for sample in samples:
        if sample.at >= moment:
            return sample
    raise BenchError(f"no sample after {moment:.1f}")


def figures(samples: list[Sample], start: float, seconds: float) -> dict[str, float]:
    """Size after the first third and at the end, ingest rate and consumer CPU per event per third."""
    third = seconds / THIRDS
    marks = [start + third * k for k in range(THIRDS + 1)]
    at_third, last = _first_from(samples, marks[1]), samples[-1]
    values = {
        "size_third_mb": at_third.size / MB,
        "size_end_mb": last.size / MB,
        "size_ratio": last.size / at_third.size,
        "size_max_after_third_mb": max(s.size for s in samples if s.at >= at_third.at) / MB,
        "stored_events_third": float(at_third.stored),
        "stored_events_end": float(last.stored),
        "stored_events_max": float(max(s.stored for s in samples)),
        "queued_max": float(max(s.queued for s in samples)),
    }
    if last.wal_size is not None and last.file_size is not None:
        values["wal_end_mb"] = last.wal_size / MB
        values["file_end_mb"] = (last.file_size - last.wal_size) / MB
    for k in range(THIRDS):
        events = _at(samples, marks[k + 1], "received") - _at(samples, marks[k], "received")
        cpu = _at(samples, marks[k + 1], "consumer_cpu") - _at(samples, marks[k], "consumer_cpu")
        values[f"rate_{k + 1}"] = events / third
        values[f"consumer_cpu_us_per_event_{k + 1}"] = cpu / events * 1e6 if events else 0.0
    values["rate_ratio"] = values[f"rate_{THIRDS}"] / values["rate_1"] if values["rate_1"] else 0.0
    return values


def _space(path: Path) -> dict[str, float]:
    """Where the SQLite file's bytes are once the consumer has stopped (its WAL checkpointed into the file):
    the events with their indexes, the keys (tombstones included), and free pages; {} without dbstat."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        by_name = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        free = (
            conn.execute("PRAGMA freelist_count").fetchone()[0]
            * conn.execute("PRAGMA page_size").fetchone()[0]
        )
    except sqlite3.OperationalError:  # SQLite built without the dbstat table
        return {}
    finally:
        conn.close()
    events = sum(by_name.get(name, 0) for name in ("events", "events_by_topic", "events_by_source"))
    return {
        "events_pages_end_mb": events / MB,
        "keys_pages_end_mb": by_name.get("keys", 0) / MB,
        "free_pages_end_mb": free / MB,
    }


async def _start_consumer(run: Run, load: Steady, backend: str) -> Child:
    consumer = await run.start("consumer", [], **load.consumer_env())
    try:
        await run.wait_attached(consumer)
    except BenchError as exc:
        if backend == "postgresql" and consumer.returncode is not None:
            last = why(consumer).splitlines()[-1].strip()
            raise ScenarioSkipped(f"the consumer refused RETENTION on PostgreSQL: {last}") from exc
        raise
    return consumer


async def _check_reported(client: httpx.AsyncClient, load: Steady, backend: str) -> None:
    """The api reports the retention the consumer recorded, and a size: what this scenario measures."""
    stats: dict[str, Any] = (await client.get("/stats")).json()
    seconds = (stats.get("retention") or {}).get("events_seconds")
    if seconds == load.retention and stats.get("store_size_bytes") is not None:
        return
    problem = (
        f"/stats reports retention={stats.get('retention')!r} store_size_bytes="
        f"{stats.get('store_size_bytes')!r}, not RETENTION={load.retention:g}s and a size"
    )
    if backend == "postgresql":
        raise ScenarioSkipped(f"the PostgreSQL store does not support retention here: {problem}")
    raise BenchError(problem)


async def measure(ctx: Context, tag: str, backend: str) -> dict[str, float]:
    load: Steady = ctx.sizes.steady
    sqlite = backend == "sqlite"
    async with AsyncExitStack() as stack:
        database = None if sqlite else await stack.enter_async_context(ThrowawayDatabase())
        run = await stack.enter_async_context(ctx.run(tag))
        run.database = database
        consumer = await _start_consumer(run, load, backend)
        api = await run.start_api()
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=run.api_url, timeout=10.0))
        await _check_reported(client, load, backend)
        samples = [await _sample(client, run, consumer, sqlite)]
        driver = await run.start(
            "bench.steady",
            ["--rate", f"{load.rate:g}", "--seconds", f"{load.seconds:g}", "--seed", str(ctx.seed)],
        )
        deadline = time.monotonic() + load.seconds + ctx.timeout
        while driver.returncode is None:
            for child in (consumer, api):
                if child.returncode is not None:
                    raise BenchError(f"{child.module} exited with {child.returncode}: {why(child)}")
            if time.monotonic() > deadline:
                raise BenchError(f"the stream did not end within {load.seconds + ctx.timeout:g}s")
            samples.append(await _sample(client, run, consumer, sqlite))
            await asyncio.sleep(load.sample_every - (time.time() - samples[-1].at))
        summary = await run.finish(driver)
        total, unique, resent = int(summary["events"]), int(summary["unique"]), int(summary["duplicates"])
        await _settled(client, total, unique, ctx.timeout, [consumer, api])
        samples.append(await _sample(client, run, consumer, sqlite))
        try:
            again = await _check_counts(client, total, unique, resent, load.key_retention is not None)
        except BenchError as exc:
            raise BenchError(f"{exc}; the consumer's log ends: {why(consumer)}") from None
        await run.stop_cleanly(consumer)
        space = _space(run.db_path) if sqlite else {}
    ctx.info["samples"] = [
        [round(s.at - samples[0].at, 1), s.received, s.stored, s.size, s.queued, round(s.consumer_cpu, 2)]
        for s in samples
    ]
    ctx.info["sample_columns"] = ["seconds", "received", "stored_events", "size_bytes", "queued", "cpu_s"]
    values = figures(samples, float(summary["first_publish_at"]), load.seconds)
    values["achieved_rate"] = float(summary["achieved_rate"])
    values["most_behind_seconds"] = float(summary["most_behind_seconds"])
    values["stored_again"] = float(again)
    return {**values, **space}


async def _settled(
    client: httpx.AsyncClient, total: int, unique: int, timeout: float, watch: list[Child]
) -> None:
    """Wait until the store has taken every event (every unique one stored) and the queue is empty: a
    redelivery counts in `received` again, so `received` alone can pass the total early."""
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = (await client.get("/stats")).json()
        queued = int((stats.get("queue") or {}).get("messages") or 0)
        if int(stats["received"]) >= total and int(stats["unique_processed"]) >= unique and not queued:
            return
        for child in watch:
            if child.returncode is not None:
                raise BenchError(f"{child.module} exited with {child.returncode}: {why(child)}")
        if time.monotonic() > deadline:
            raise BenchError(
                f"after {timeout:g}s the store shows received={stats['received']} of {total}, "
                f"unique_processed={stats['unique_processed']} of {unique}, {queued} messages queued"
            )
        await asyncio.sleep(0.2)


async def _check_counts(
    client: httpx.AsyncClient, total: int, unique: int, resent: int, keys_forgotten: bool
) -> int:
    """Exact counters after the stream: every re-send a duplicate (expired or not), and every unique event
    either readable or expired. Under KEY_RETENTION a re-send of a forgotten key is stored again: then the
    re-sends are split between duplicates and events stored again, whose number is returned."""
    stats: dict[str, Any] = (await client.get("/stats")).json()
    again = int(stats.get("unique_processed", 0)) - unique if keys_forgotten else 0
    want = {"received": total, "unique_processed": unique + again, "duplicate_dropped": resent - again}
    want.update(invalid=0, conflicts=0)
    wrong: dict[str, tuple[Any, Any]] = {
        name: (stats.get(name), value) for name, value in want.items() if stats.get(name) != value
    }
    if not 0 <= again <= resent:
        wrong["stored again"] = (again, f"0 to {resent}")
    held = int(stats["stored_events"]) + int(stats["expired_events"])
    if held != unique + again:
        wrong["stored_events + expired_events"] = (held, unique + again)
    if wrong:
        detail = ", ".join(f"{name}={got} (expected {value})" for name, (got, value) in wrong.items())
        raise BenchError(f"wrong outcome after the stream: {detail}")
    return again


async def retention(ctx: Context, tag: str) -> dict[str, float]:
    return await measure(ctx, tag, "sqlite")


async def retention_postgres(ctx: Context, tag: str) -> dict[str, float]:
    return await measure(ctx, tag, "postgresql")
