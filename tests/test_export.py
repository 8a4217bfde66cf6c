"""GET /events/export and the publisher's export and replay, against real processes."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection

from bench import bigstore
from tests.harness.deploy import REPO
from tests.harness.pipeline import counters, start_load, start_pipeline
from tests.harness.postgres import fresh_schema
from tests.harness.processes import Processes, all_events, api_get
from tests.harness.waiting import eventually
from tests.test_tail import rss_bytes

MILLION = 1_000_000
EVENT_ID = re.compile(rb'"event_id":"([^"]*)"')


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
    expected = [event_id.encode() for _, event_id, *_ in bigstore._rows(MILLION, 1, Counter())]
    exported_ids: list[bytes] = []
    count, rest, first_line = 0, b"", b""
    started = time.monotonic()
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("GET", f"{deployment.api_url}/events/export") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/x-ndjson"
        async for chunk in answer.aiter_bytes():
            *lines, rest = (rest + chunk).split(b"\n")
            if lines:
                first_line = first_line or lines[0]
                # The ids by pattern (json.loads of every line would take the test most of its time).
                exported_ids += EVENT_ID.findall(b"\n".join(lines))
                count += len(lines)
            peak = max(peak, rss_bytes(api))
    exported = time.monotonic() - started
    assert (count, rest) == (MILLION, b"")
    assert exported_ids == expected
    first = json.loads(first_line)
    assert first == api_get(deployment, "/events", limit=1).json()[0]
    assert list(first) == ["topic", "event_id", "timestamp", "source", "payload", "received_at"]
    grown = peak - before
    print(
        f"built {MILLION} events in {built:.1f}s; exported in {exported:.1f}s; api RSS "
        f"{before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB (+{grown / 2**20:.1f})"
    )
    assert grown < 32 * 2**20


def without_received_at(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # received_at is the store's clock: a rebuilt store received the events later.
    return [{k: v for k, v in e.items() if k != "received_at"} for e in events]


@pytest.mark.backends("sqlite", "postgres")
async def test_an_export_replayed_into_a_fresh_store_gives_identical_events_and_exact_counters(
    procs: Processes,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    deployment = procs.deployment
    consumer, api = await start_pipeline(procs, amqp)
    load = start_load(procs, 3000, 91, "--topics", "4")
    assert load.wait(120) == 0, load.output()[-2000:]
    unique = int(json.loads(load.output().splitlines()[-1])["unique"])
    await eventually(lambda: counters(deployment)["unique_processed"] == unique, 60, message="stored")
    original = all_events(deployment)
    exported = tmp_path / "export.ndjson"
    run = procs.start("publisher", "export", "--out", str(exported))
    assert run.wait(60) == 0, run.output()
    assert f"exported {unique} events to {exported}" in run.output()
    one_topic = tmp_path / "topic.ndjson"
    topic = original[0]["topic"]
    run = procs.start("publisher", "export", "--out", str(one_topic), "--topic", topic, "--quiet")
    assert run.wait(60) == 0, run.output()
    assert [json.loads(line) for line in one_topic.read_text().splitlines()] == all_events(deployment, topic)

    # A fresh store: the same deployment after a reset, rebuilt from the export alone.
    for process in (api, consumer):
        assert process is not None and process.terminate() == 0
    if backend == "postgres":
        database = request.getfixturevalue("postgres_database")
        fresh = {"DATABASE_URL": await asyncio.to_thread(fresh_schema, database)}
    else:
        fresh = {"DB_PATH": str(tmp_path / "fresh.db")}
    await start_pipeline(procs, amqp, consumer_env=fresh, api_env=fresh)
    assert all_events(deployment) == []
    assert [json.loads(line) for line in exported.read_text().splitlines()] == original
    for replays in (1, 2):  # the second replay finds every event stored: all duplicates
        replay = procs.start("publisher", "replay", str(exported), "--json", "--quiet")
        assert replay.wait(120) == 0, replay.output()[-2000:]
        assert json.loads(replay.output().splitlines()[-1])["confirmed"] == unique
        await eventually(
            lambda n=replays: counters(deployment)["received"] == n * unique, 60, message="taken"
        )
        assert without_received_at(all_events(deployment)) == without_received_at(original)
        assert counters(deployment) == {
            "received": replays * unique,
            "unique_processed": unique,
            "duplicate_dropped": (replays - 1) * unique,
            "invalid": 0,
            "conflicts": 0,
        }


async def test_the_publisher_export_shows_a_progress_bar_on_a_terminal_and_writes_every_event(
    procs: Processes, tmp_path: Path
) -> None:
    deployment = procs.deployment
    total = 200_000
    await asyncio.to_thread(bigstore.build, deployment.db_path, total)
    await start_pipeline(procs, None, with_consumer=False)
    out = tmp_path / "all.ndjson"
    master, terminal = pty.openpty()
    popen = subprocess.Popen(
        [sys.executable, "-m", "publisher", "export", "--out", str(out)],
        cwd=REPO,
        env=deployment.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    shown = bytearray()
    try:

        def finished() -> bool:
            while select.select([master], [], [], 0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal's other end closed: the export is over
                    return True
                if not chunk:
                    return True
                shown.extend(chunk)
            return popen.poll() is not None

        await eventually(finished, 120, 0.05, message="the export finished")
        assert popen.wait(10) == 0, bytes(shown[-500:])
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(10)
        os.close(master)
    bars = re.findall(rb"\r\x1b\[K\[([# ]{30})\] exported (\d+)/%d \((\d+)%%\)" % total, shown)
    counts = [int(count) for _, count, _ in bars]
    assert counts == sorted(counts) and counts[-1] == total and bars[-1][0] == b"#" * 30
    assert any(0 < count < total for count in counts), bytes(shown[:300])  # it moved while it worked
    assert f"exported {total} events to {out}".encode() in shown
    with out.open("rb") as lines:
        assert sum(1 for _ in lines) == total
    assert not out.with_name(out.name + ".partial").exists()
