"""The search scenario: GET /events?q= and payload.<field>= on a store of --stored events with SEARCH on,
against unfiltered pages of the same store, requests one at a time, kinds interleaved.

Selective searches (one event, or about 500 of 1,000,000) must answer in p99 <= 50 ms; a search matching a
tenth of the events must page at about the cost of an unfiltered page (`tenth_over_unfiltered_p50`).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import httpx

from api.queries import encode_cursor
from bench.broker import BenchError

if TYPE_CHECKING:
    from bench.scenarios import Context

WARMUP = 20
KINDS = (
    "unfiltered",
    "unfiltered_deep",
    "word_one",  # q=<a number>: one event
    "phrase_one",  # q="stored event <n>": one event
    "field_few",  # payload.latency_ms=<n>: about 1 in 2,000
    "tenth",  # q=failed: a tenth of the events, first page
    "tenth_deep",  # the same, from the middle of the store
    "tenth_field_desc",  # payload.status=failed, newest first
)


def _paths(stored: int, rng: random.Random) -> dict[str, str]:
    middle = encode_cursor(stored // 2)
    n = rng.randrange(stored)
    return {
        "unfiltered": "/events?limit=100",
        "unfiltered_deep": f"/events?limit=100&after={middle}",
        "word_one": f"/events?limit=100&q={n}",
        "phrase_one": f'/events?limit=100&q="stored event {n}"',
        "field_few": f"/events?limit=100&payload.latency_ms={rng.randrange(2000)}",
        "tenth": "/events?limit=100&q=failed",
        "tenth_deep": f"/events?limit=100&q=failed&after={middle}",
        "tenth_field_desc": "/events?limit=100&payload.status=failed&order=desc",
    }


def _expected(kind: str, found: int) -> bool:
    if kind in ("word_one", "phrase_one"):
        return found == 1
    if kind == "field_few":
        return True  # about 500 at 1,000,000 stored; maybe none in a small store
    return found == 100


async def search_queries(ctx: Context, tag: str) -> dict[str, float]:
    from bench.scenarios import percentile

    if ctx.search_store is None:
        raise BenchError("no prebuilt store with SEARCH on")
    rng = random.Random(ctx.seed)
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with ctx.run(tag) as run:
        await ctx.link.declare(run.topology)
        run.db_path, run.owns_store = ctx.search_store, False  # the api only reads it
        api = await run.start_api()
        async with httpx.AsyncClient(base_url=run.api_url, timeout=10.0) as client:
            for i in range(WARMUP + ctx.sizes.query_requests):
                paths = _paths(ctx.sizes.stored, rng)
                for kind in KINDS:
                    started = time.perf_counter()
                    response = await client.get(paths[kind])
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200 or not _expected(kind, len(response.json())):
                        raise BenchError(
                            f"GET {paths[kind]}: HTTP {response.status_code} {response.text[:200]}"
                        )
                    if i >= WARMUP:
                        timings[kind].append(elapsed * 1000)
        await run.stop_cleanly(api)
    values: dict[str, float] = {}
    for kind, samples in timings.items():
        values[f"{kind}_p50_ms"] = percentile(samples, 50)
        values[f"{kind}_p99_ms"] = percentile(samples, 99)
    values["selective_worst_p99_ms"] = max(
        values[f"{k}_p99_ms"] for k in ("word_one", "phrase_one", "field_few")
    )
    values["tenth_over_unfiltered_p50"] = values["tenth_p50_ms"] / values["unfiltered_p50_ms"]
    values["tenth_deep_over_unfiltered_deep_p50"] = (
        values["tenth_deep_p50_ms"] / values["unfiltered_deep_p50_ms"]
    )
    return values
