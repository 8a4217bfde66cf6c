"""The soak in the suite: 3 minutes of every traffic through every fault, on both backends at once.

Each backend is its own `python -m tests.soak` (its own 3-node cluster, store, deployables), run side by side
to keep the suite's time down; each exits 0 only if its final check found nothing lost, unexpected or
altered, exact counters, the dead letters exactly the poison, nothing stuck in the queue, every fault
recovered, and no resource growing (tests/soak/). `make soak` runs it longer.

The analysis the soak relies on is tested on its own too: the schedule is a function of the seed, and the
growth check flags a leak and passes a flat, noisy series.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.broker import RABBITMQ_SERVER
from tests.harness.private_postgres import BIN as POSTGRES_BIN
from tests.harness.processes import REPO
from tests.soak.resources import Sample, growth_check
from tests.soak.schedule import schedule
from tests.soak.traffic import Observed

MINUTES = float(os.environ.get("SOAK_TEST_MINUTES", "3"))
# Setup (two 3-node clusters with the management plugin) and the drain and check, beyond the run itself.
OVERHEAD = 900


@pytest.mark.soak
@pytest.mark.timeout(MINUTES * 60 + OVERHEAD + 60)
def test_a_3_minute_soak_per_backend_loses_nothing_and_grows_nothing(tmp_path: Path) -> None:
    missing = [str(p) for p in (RABBITMQ_SERVER, POSTGRES_BIN / "postgres") if not p.exists()]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the soak needs {missing}")
        pytest.skip(f"the soak needs {missing}")
    seed = int(os.environ.get("SOAK_SEED") or random.randrange(1, 1 << 31))
    runs = {}
    for backend in ("sqlite", "postgres"):
        out = tmp_path / backend
        out.mkdir()
        log = (out / "stdout.txt").open("wb")
        runs[backend] = (
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.soak",
                    *("--minutes", str(MINUTES), "--backend", backend, "--seed", str(seed)),
                    *("--out", str(out), "--sample-interval", "5"),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            out,
            log,
        )
    deadline = time.monotonic() + MINUTES * 60 + OVERHEAD
    failures = []
    for backend, (process, out, log) in runs.items():
        try:
            code = process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
        text = (out / "stdout.txt").read_text(errors="replace")
        report = (out / "report.txt").read_text() if (out / "report.txt").exists() else text[-6000:]
        print(f"\n---- {backend} (SOAK_SEED={seed}) ----\n{report}")
        if code != 0:
            failures.append(f"{backend}: exit {code} (SOAK_SEED={seed}, output in {out})\n{text[-6000:]}")
    assert not failures, "\n\n".join(failures)


def test_the_fault_schedule_is_a_function_of_the_seed_and_has_every_kind() -> None:
    first = schedule(7, 180, "postgres", 3, 4)
    assert first == schedule(7, 180, "postgres", 3, 4)
    assert first != schedule(8, 180, "postgres", 3, 4)
    kinds = {fault.kind for fault in first}
    assert {"consumer_kill", "consumer_stop", "api_kill", "leader_kill", "db_restart", "net_cut"} <= kinds
    assert [f.at for f in first] == sorted(f.at for f in first)
    assert all(0 <= f.at < 180 for f in first)
    # A SIGSTOP lasts longer than the broker's heartbeat timeout (two missed heartbeats).
    assert all(f.duration > 2 * 4 for f in first if f.kind == "consumer_stop")
    # SQLite has one consumer and no database server to restart.
    on_sqlite = schedule(7, 1800, "sqlite", 1, 4)
    assert {f.target for f in on_sqlite if f.kind == "consumer_kill"} == {0}
    assert not {f.kind for f in on_sqlite} & {"db_restart", "db_kill"}
    assert sum(f.kind == "consumer_kill" for f in on_sqlite) >= 100


def test_the_growth_check_flags_a_steady_leak_and_passes_a_flat_noisy_series() -> None:
    rng = random.Random(3)
    samples = []
    for i in range(60):
        t = i * 10.0
        flat = 100 + rng.uniform(-8, 8) + (60 if i == 50 else 0)  # noise and one spike
        leak = 100 + 0.1 * t + rng.uniform(-2, 2)  # 0.1 MiB/s: 40 MiB over the window
        samples.append(Sample(t, {"flat rss_mib": flat, "leak rss_mib": leak, "other unchecked": t}))
    results = {g.series: g for g in growth_check(samples, 0, 590)}
    assert set(results) == {"flat rss_mib", "leak rss_mib"}
    assert results["flat rss_mib"].ok, results["flat rss_mib"].line()
    assert not results["leak rss_mib"].ok, results["leak rss_mib"].line()
    assert 35 < results["leak rss_mib"].growth < 45


def test_the_stats_check_allows_overlapping_reads_answered_out_of_order_and_flags_a_read_going_back() -> None:
    def stats(received: int) -> dict[str, int]:
        return {
            "received": received,
            "unique_processed": received,
            "duplicate_dropped": 0,
            "invalid": 0,
            "conflicts": 0,
        }

    observed = Observed()
    first_sent = time.monotonic()
    second_sent = time.monotonic()
    observed.saw_stats(stats(120), second_sent)  # sent second, answered first
    observed.saw_stats(stats(117), first_sent)  # in flight at once: its snapshot may be the older one
    assert observed.violations == []
    observed.saw_stats(stats(118), time.monotonic())  # sent after 120 was answered
    assert observed.violations == [
        "/stats counter received went back from 120 (answered before this request was sent) to 118",
        "/stats counter unique_processed went back from 120 (answered before this request was sent) to 118",
    ]
    assert observed.received == 120


async def test_a_node_closing_the_connection_during_the_handshake_is_a_broker_error() -> None:
    from broker import connection as amqp

    async def close_after_the_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(8)  # the AMQP protocol header; then the node goes away
        writer.close()

    server = await asyncio.start_server(close_after_the_header, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(amqp.BROKER_ERRORS):
            await amqp.connect([f"amqp://guest:guest@127.0.0.1:{port}/"], name="tests", attempts=1)
    finally:
        server.close()
