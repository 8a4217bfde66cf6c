"""`python -m bench.migration --events N`: how long the upgrade of a SQLite store of N events takes.

Builds a store as the previous release left it: schema version 6 (store/sqlite/schema.py MIGRATIONS[:6],
the UNIQUE (topic, event_id) constraint on `events`), its rows written with that release's statements (the
events in batches of BATCH sharing one `received_at`, growing with seq; the per-topic counts, duplicates
and conflicts; the counters; the consumer's state; a few dead letters), counters consistent with the rows.
Then, for each of `--runs` fresh copies of it, times `SqliteWriter.open` (which migrates it to the current
version: the `keys` table filled from the events in buckets, `events` rebuilt; the first open also builds
the sealed buckets' filters) and checks that nothing changed: the events row for row (by a digest), the
counters, per-topic counts, dead letters and consumer state, one key per event pointing at its event, and
a batch applied afterwards gets the next seq. The copy is on disk (fsynced) before the clock starts, as a
store that has been running would be; the page cache is warm.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import machine
from contract.event import Event, serialise_payload
from store import key_hash
from store.clock import utc_text
from store.sqlite import SqliteWriter
from store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

PREVIOUS_VERSION = 6
BATCH = 256  # the consumer's default BATCH_SIZE: the events of a batch share one received_at
CHUNK = 50_000  # rows per build transaction
TOPICS = tuple(f"demo.{name}" for name in ("orders", "payments", "auth", "search", "billing", "shipping"))
DEAD_LETTERS = 12
SAMPLED_KEYS = 10_000  # events whose key hash is recomputed here and looked up in `keys`

# The previous release's statements (store/sqlite/writer.py before migration 7): seq handed out by SQLite.
_INSERT = (
    "INSERT INTO events (topic, event_id, timestamp, source, payload, received_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_TOPICS = (
    "INSERT INTO topics (topic, count, first_seq, duplicates, conflicts)"
    " VALUES (?1, ?2, (SELECT MIN(seq) FROM events WHERE topic = ?1), ?3, ?4)"
    " ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count,"
    " duplicates = duplicates + excluded.duplicates, conflicts = conflicts + excluded.conflicts"
)
_STATE = (
    "INSERT INTO consumer_state (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _rows(count: int, seed: int, topics: Counter[str]) -> Iterator[tuple[str, str, str, str, str, str]]:
    """The events in seq order, their batches spread over the last 30 days (`received_at` grows with seq)."""
    rng = random.Random(seed)
    batches = (count + BATCH - 1) // BATCH
    start = datetime.now(UTC) - timedelta(days=30)
    step = timedelta(days=30) / max(batches, 1)
    for i in range(count):
        topic = TOPICS[rng.randrange(len(TOPICS))]
        topics[topic] += 1
        payload = {"seq": i, "level": "info", "message": f"event {i}", "latency_ms": rng.randrange(2000)}
        yield (
            topic,
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            f"loadgen-{rng.randrange(4)}",
            serialise_payload(payload).decode(),
            utc_text(start + step * (i // BATCH)),
        )


def build_previous(path: Path, count: int, seed: int) -> None:
    """A store of schema version 6 holding `count` events, as the previous release's writer left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF")  # the build only
        for version, script in enumerate(MIGRATIONS[:PREVIOUS_VERSION], start=1):
            conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {version}; COMMIT;")
        stored: Counter[str] = Counter()
        rows = _rows(count, seed, stored)
        while chunk := list(itertools.islice(rows, CHUNK)):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, chunk)
            conn.execute("COMMIT")
        first, last = conn.execute(
            "SELECT (SELECT received_at FROM events ORDER BY seq LIMIT 1),"
            " (SELECT received_at FROM events ORDER BY seq DESC LIMIT 1)"
        ).fetchone()
        # A quarter as many re-sends as events, one in a hundred of them a conflict, spread over the topics.
        duplicates = {topic: n // 4 for topic, n in stored.items()}
        conflicts = {topic: n // 400 for topic, n in stored.items()}
        invalid = DEAD_LETTERS
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_TOPICS, [(t, stored[t], duplicates[t], conflicts[t]) for t in sorted(stored)])
        totals = {
            "received": count + sum(duplicates.values()) + invalid,
            "unique_processed": count,
            "duplicate_dropped": sum(duplicates.values()),
            "invalid": invalid,
            "conflicts": sum(conflicts.values()),
        }
        conn.executemany("UPDATE counters SET value = ? WHERE name = ?", [(v, k) for k, v in totals.items()])
        conn.executemany(
            "INSERT INTO dead_letters (at, kind, reason, routing_key, body, size, truncated)"
            " VALUES (?, 'not_json', 'body is not JSON', 'demo.orders', ?, ?, 0)",
            [(last, f"not json {i}".encode(), len(f"not json {i}")) for i in range(invalid)],
        )
        conn.execute("INSERT INTO dead_letter_counts (kind, count) VALUES ('not_json', ?)", (invalid,))
        state = {"started_at": first, "journal_mode": "wal", "synchronous": "FULL", "last_commit_at": last}
        conn.executemany(_STATE, list(state.items()))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def snapshot(path: Path) -> dict[str, Any]:
    """What must survive the upgrade unchanged, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        digest = hashlib.blake2b(digest_size=16)
        count = 0
        for row in conn.execute(
            "SELECT seq, topic, event_id, timestamp, source, payload, received_at FROM events ORDER BY seq"
        ):
            digest.update(repr(row).encode())
            count += 1
        return {
            "version": int(conn.execute("PRAGMA user_version").fetchone()[0]),
            "events": count,
            "events_digest": digest.hexdigest(),
            "max_seq": conn.execute("SELECT MAX(seq) FROM events").fetchone()[0],
            "counters": dict(conn.execute("SELECT name, value FROM counters ORDER BY name").fetchall()),
            "topics": conn.execute(
                "SELECT topic, count, first_seq, duplicates, conflicts FROM topics ORDER BY topic"
            ).fetchall(),
            # The columns of schema 6; later schemas add message_id, NULL for the dead letters kept before.
            "dead_letters": conn.execute(
                "SELECT id, at, kind, reason, routing_key, body, size, truncated"
                " FROM dead_letters ORDER BY id"
            ).fetchall(),
            "dead_letter_counts": conn.execute("SELECT * FROM dead_letter_counts").fetchall(),
            "consumer_state": dict(conn.execute("SELECT key, value FROM consumer_state").fetchall()),
        }
    finally:
        conn.close()


def check_keys(path: Path, events: int, seed: int) -> list[str]:
    """Problems with the migrated `keys`: one per event, each pointing at its event's seq."""
    problems = []
    conn = sqlite3.connect(path)
    try:
        keys = int(conn.execute("SELECT COUNT(*) FROM keys").fetchone()[0])
        if keys != events:
            problems.append(f"keys {keys} != events {events}")
        counted = int(conn.execute("SELECT COALESCE(SUM(keys), 0) FROM key_buckets").fetchone()[0])
        if counted != events:
            problems.append(f"key_buckets count {counted} keys, events {events}")
        joined = int(conn.execute("SELECT COUNT(*) FROM keys JOIN events USING (seq)").fetchone()[0])
        if joined != events:
            problems.append(f"keys pointing at an event {joined} != events {events}")
        sampled = conn.execute(
            "SELECT seq, topic, event_id FROM events WHERE seq % ? = 0",
            (max(1, events // SAMPLED_KEYS),),
        ).fetchall()
        for seq, topic, event_id in sampled:
            # Whichever bucket holds it: a seek on the primary key (bucket, h) per bucket.
            row = conn.execute(
                "SELECT seq FROM keys WHERE bucket IN (SELECT bucket FROM key_buckets) AND h = ?",
                (key_hash(topic, event_id),),
            ).fetchone()
            if row is None or int(row[0]) != seq:
                problems.append(f"key of {topic}/{event_id} (seq {seq}) is {row}")
                break
    finally:
        conn.close()
    return problems


def _copy_to_disk(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def migrate(path: Path) -> tuple[float, float]:
    """Seconds to open (and so migrate) the store with the current writer, and to open it again."""
    started = time.perf_counter()
    writer = await SqliteWriter.open(path)
    migrated = time.perf_counter() - started
    await writer.close()
    started = time.perf_counter()
    writer = await SqliteWriter.open(path)
    again = time.perf_counter() - started
    await writer.close()
    return migrated, again


async def apply_one(path: Path) -> tuple[int, dict[str, int]]:
    """A batch of one new event after the upgrade: (its seq, the counters after it)."""
    writer = await SqliteWriter.open(path)
    try:
        item = Event(
            topic="demo.orders",
            event_id=f"after-upgrade-{uuid.uuid4()}",
            timestamp="2026-12-01T00:00:00Z",
            source="migration-bench",
        )
        result = await writer.apply([[item]])
        if result.unique_processed != 1:
            raise RuntimeError(f"the batch after the upgrade stored {result.unique_processed} events")
        counters = await writer.counters()
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    try:
        seq = conn.execute("SELECT seq FROM events WHERE event_id = ?", (item.event_id,)).fetchone()
    finally:
        conn.close()
    return int(seq[0]), counters


def one_run(built: Path, before: dict[str, Any], workdir: Path, index: int, seed: int) -> dict[str, Any]:
    path = workdir / f"run-{index}.db"
    _copy_to_disk(built, path)
    size_before = path.stat().st_size
    migrated, again = asyncio.run(migrate(path))
    after = snapshot(path)
    problems = [
        f"{name}: {before[name]!r} -> {after[name]!r}"[:300]
        for name in before
        if name != "version" and before[name] != after[name]
    ]
    if after["version"] != SCHEMA_VERSION:
        problems.append(f"schema version {after['version']}, expected {SCHEMA_VERSION}")
    problems += check_keys(path, before["events"], seed)
    wal = path.with_name(path.name + "-wal")
    sizes = {"file_before_mb": size_before / 1e6, "file_after_mb": path.stat().st_size / 1e6}
    sizes["wal_after_mb"] = wal.stat().st_size / 1e6 if wal.exists() else 0.0
    seq, counters = asyncio.run(apply_one(path))
    if seq != before["max_seq"] + 1:
        problems.append(f"the next event got seq {seq}, expected {before['max_seq'] + 1}")
    expected = {**before["counters"]}
    expected["received"] += 1
    expected["unique_processed"] += 1
    if counters != expected:
        problems.append(f"counters after one more event {counters}, expected {expected}")
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {
        "run": index + 1,
        "migrate_seconds": migrated,
        "reopen_seconds": again,
        **sizes,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.migration", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000, help="events in the store (default 1000000)")
    p.add_argument("--runs", type=int, default=2, help="migrations of fresh copies (default 2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--db-dir", type=Path, help="where the stores go (default: the system's temp dir)")
    p.add_argument("--output", type=Path, metavar="PATH", help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.events < 1 or args.runs < 1:
        p.error("need --events >= 1 and --runs >= 1")
    root = args.db_dir or Path(tempfile.gettempdir())
    facts = machine.facts(root)
    with tempfile.TemporaryDirectory(prefix="eventagg-migration-", dir=root) as workdir:
        built = Path(workdir) / "previous.db"
        started = time.perf_counter()
        build_previous(built, args.events, args.seed)
        build_seconds = time.perf_counter() - started
        before = snapshot(built)
        if before["version"] != PREVIOUS_VERSION or before["events"] != args.events:
            print(f"bench.migration: built {before['events']} events at version {before['version']}")
            return 1
        print(
            f"built a schema-{PREVIOUS_VERSION} store of {args.events:,} events "
            f"({built.stat().st_size / 1e6:,.0f} MB) in {build_seconds:.1f}s; load average "
            f"{machine.load_average()}",
            flush=True,
        )
        runs = []
        for index in range(args.runs):
            result = one_run(built, before, Path(workdir), index, args.seed)
            result["load_average"] = machine.load_average()
            runs.append(result)
            verdict = "counts identical" if not result["problems"] else "; ".join(result["problems"])
            print(
                f"run {index + 1}: migrated to version {SCHEMA_VERSION} in {result['migrate_seconds']:.1f}s "
                f"(reopening it: {result['reopen_seconds']:.2f}s); file {result['file_before_mb']:,.0f} -> "
                f"{result['file_after_mb']:,.0f} MB, -wal {result['wal_after_mb']:,.0f} MB; "
                f"load average {result['load_average']}; {verdict}",
                flush=True,
            )
    summary = {
        "events": args.events,
        "build_seconds": build_seconds,
        "counters": before["counters"],
        "runs": runs,
        "machine": facts,
        "command": " ".join(["python -m bench.migration", *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.output is not None:
        args.output.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 1 if any(r["problems"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
