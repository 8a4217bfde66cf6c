"""Search on a PostgreSQL store of many events: `python -m bench.search_postgres --events 1000000`.

Fills a throwaway database as bench/bigstore_postgres.py does, turns SEARCH on (the writer indexes the
events already stored: the time it takes is printed), VACUUM ANALYZE as autovacuum would, then times the
reader's pages, one at a time, kinds interleaved: unfiltered, a word of one event, a phrase of one event
(`"stored event <n>"`: two words every event holds), a payload field of about 1 in 2,000, a phrase of a
quarter of the events (`"loadgen 1"`), first pages and from the middle. Prints p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable

import asyncpg

from bench import bigstore_postgres
from bench.postgres import ThrowawayDatabase
from bench.scenarios import percentile
from store import Filters
from store.postgres import PostgresReader, PostgresWriter
from store.search import parse

Query = tuple[str | None, list[tuple[str, str]], int]


def kinds(count: int, rng: random.Random) -> dict[str, Callable[[], Query]]:
    return {
        "unfiltered": lambda: (None, [], 0),
        "unfiltered_deep": lambda: (None, [], count // 2),
        "word_one": lambda: (str(rng.randrange(count)), [], 0),
        "phrase_one": lambda: (f'"stored event {rng.randrange(count)}"', [], 0),
        "field_few": lambda: (None, [("latency_ms", str(rng.randrange(2000)))], 0),
        "quarter": lambda: ('"loadgen 1"', [], 0),
        "quarter_deep": lambda: ('"loadgen 1"', [], count // 2),
    }


async def main(count: int, requests: int) -> None:
    async with ThrowawayDatabase() as db:
        started = time.monotonic()
        await bigstore_postgres.fill(db.url, count, False)
        print(f"filled {count:,} events in {time.monotonic() - started:.1f}s", flush=True)
        writer = await PostgresWriter.open(db.url)
        started = time.monotonic()
        await writer.record_search(True)
        print(f"SEARCH on: stored events indexed in {time.monotonic() - started:.1f}s", flush=True)
        await writer.close()
        conn = await asyncpg.connect(db.url)
        await conn.execute("VACUUM ANALYZE events")
        await conn.close()
        reader = PostgresReader(db.url)
        rng = random.Random(1)
        chosen = kinds(count, rng)
        timings: dict[str, list[float]] = {kind: [] for kind in chosen}
        for i in range(20 + requests):
            for kind, query in chosen.items():
                q, pairs, after = query()
                filters = Filters(search=parse(q, pairs))
                started = time.perf_counter()
                await reader.page(None, 100, after, False, filters)
                if i >= 20:
                    timings[kind].append((time.perf_counter() - started) * 1000)
        await reader.close()
        for kind, samples in timings.items():
            print(f"{kind}: p50 {percentile(samples, 50):.2f} ms, p99 {percentile(samples, 99):.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.search_postgres", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.requests))
