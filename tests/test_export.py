"""GET /events/export and the publisher's export and replay, against real processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx

from bench import bigstore
from tests.harness.pipeline import start_pipeline
from tests.harness.processes import Processes, api_get
from tests.test_tail import rss_bytes

MILLION = 1_000_000


async def test_an_export_of_a_million_events_streams_every_one_in_order_with_bounded_api_memory(
    procs: Processes,
) -> None:
    deployment = procs.deployment
    started = time.monotonic()
    await asyncio.to_thread(bigstore.build, deployment.db_path, MILLION)
    built = time.monotonic() - started
    _, api = await start_pipeline(procs, None, with_consumer=False)
    assert api_get(deployment, "/events", limit=1).status_code == 200
    before = peak = rss_bytes(api)
    expected = (event_id for _, event_id, *_ in bigstore._rows(MILLION, 1, Counter()))
    count, rest = 0, b""
    started = time.monotonic()
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("GET", f"{deployment.api_url}/events/export") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/x-ndjson"
        async for chunk in answer.aiter_bytes():
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                assert json.loads(line)["event_id"] == next(expected)
            count += len(lines)
            peak = max(peak, rss_bytes(api))
    exported = time.monotonic() - started
    assert (count, rest, next(expected, None)) == (MILLION, b"", None)
    grown = peak - before
    print(
        f"built {MILLION} events in {built:.1f}s; exported in {exported:.1f}s; api RSS "
        f"{before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB (+{grown / 2**20:.1f})"
    )
    assert grown < 32 * 2**20
