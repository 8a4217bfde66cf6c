"""`python -m bench.migration_postgres --events N`: how long a PostgreSQL store of schema 6 holding N events
takes to migrate in place (the first consumer of this release does it on start, under the migration lock).

The store is built in a throwaway database as schema 6's writer would have left it (events of 8 topics with
UUID ids, striped counters), then opened by this release's writer; the time of that open is the migration.
The events, keys and counters are checked exact afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from bench.postgres import ThrowawayDatabase
from store.postgres import SCHEMA_VERSION, PostgresWriter
from store.postgres.schema import MIGRATIONS

_FILL = """
    INSERT INTO events (seq, topic, event_id, timestamp, source, payload, received_at)
    SELECT i, 'demo.topic-' || i % 8,
        gen_random_uuid()::text, '2026-11-22T10:15:00Z', 'loadgen-' || i % 4,
        '{"seq":' || i || ',"level":"info","message":"stored event ' || i || '"}',
        to_char((timestamptz '2026-11-01 00:00:00Z' + i * interval '1 ms') AT TIME ZONE 'UTC',
            'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    FROM generate_series(1, $1) AS i
"""
_COUNTERS = "SELECT name, SUM(value) FROM counter_slots GROUP BY name ORDER BY name"


async def measure(events: int) -> float:
    async with ThrowawayDatabase() as database:
        conn = await asyncpg.connect(database.url)
        try:
            await conn.execute("CREATE TABLE eventagg_schema (version integer NOT NULL)")
            for version, script in enumerate(MIGRATIONS[:6], start=1):
                assert isinstance(script, str)
                await conn.execute(script)
                await conn.execute("INSERT INTO eventagg_schema (version) VALUES ($1)", version)
            await conn.execute(_FILL, events)
            await conn.execute("SELECT setval('events_seq', $1)", events)
            await conn.execute(
                "UPDATE counter_slots SET value = $1"
                " WHERE slot = 0 AND name IN ('received', 'unique_processed')",
                events,
            )
            await conn.execute("VACUUM ANALYZE")
            await conn.execute("CHECKPOINT")
            before = await conn.fetch(
                "SELECT name, SUM(value) FROM counter_slots GROUP BY name ORDER BY name"
            )
            started = time.perf_counter()
            writer = await PostgresWriter.open(database.url)
            took = time.perf_counter() - started
            await writer.close()
            after = await conn.fetch("SELECT name, SUM(value) FROM counter_slots GROUP BY name ORDER BY name")
            counted = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_keys)"
            )
            assert before == after, (before, after)
            assert tuple(counted) == (events, events), counted
        finally:
            await conn.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    took = [asyncio.run(measure(args.events)) for _ in range(args.runs)]
    print(
        f"schema 6 -> {SCHEMA_VERSION} with {args.events:,} events: " + ", ".join(f"{t:.1f}s" for t in took)
    )


if __name__ == "__main__":
    main()
