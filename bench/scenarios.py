"""The scenarios: each repetition runs in a fresh `Run` and returns figures, or raises BenchError.

Throughput clocks start at the publisher's first send (its wall-clock `first_publish_at`, so process start-up
and load generation are outside) and stop at the first poll of the store that shows every event (or, for the
ceiling, when the bare consumer acked the last message).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from api.queries import encode_cursor
from bench import bigstore_postgres
from bench.bare import REFERENCE_ACK_EVERY, REFERENCE_PREFETCH
from bench.broker import BenchError, BrokerLink
from bench.child import Child
from bench.cpu import CpuMeter, listener_pid
from bench.postgres import ThrowawayDatabase
from bench.retention import FULL_STEADY, QUICK_STEADY, Steady, retention, retention_postgres
from bench.search import search_queries
from bench.trial import DUPLICATES, START_TIMEOUT, Run, expect_outcome, why
from broker.publisher import DEFAULT_LINGER

SHIM_EVENTS_PER_REQUEST = 500
SHIM_CONCURRENCY = 4
BASELINE_CONCURRENCY = 8
LATENCY_SAMPLE_EVERY = 50
# The publisher CLI's defaults: envelopes of up to 100 events of one topic, sent after a linger of 20 ms.
# The clock starts when an event is handed to the publisher, so the linger is part of what is measured.
LATENCY_ENVELOPE = 100
QUERY_WARMUP = 20


@dataclass(frozen=True, slots=True)
class Sizes:
    count: int = 100_000  # end to end, ceiling, shim, ingest at scale
    baseline_count: int = 4_000  # the baseline manages 100-300 per second here; rates are comparable
    latency_rate: float = 1000.0
    latency_seconds: float = 30.0
    stored: int = 1_000_000
    query_requests: int = 300  # per kind of request, per repetition
    backlog: int = 200_000
    apply_events: int = 50_000  # the store's batch apply alone, single-event messages in batches of 256
    publish_count: int = 20_000  # publish-only runs: the publisher CLI and the pika reference
    shim_topics: int = 10_000  # events (and topics) in the one many-topics POST
    sequential_requests: int = 1_000  # single-event POSTs (and pika round trips), one at a time
    stored_requests: int = 500  # of each mode: POST ?wait=stored and plain POST, alternating
    drain: int = 50_000  # queued single-event messages a consumer drains (the product's and the reference)
    steady: Steady = FULL_STEADY  # the retention scenario's stream: 10 minutes at 1,000/s, RETENTION 60s


FULL = Sizes()
QUICK = Sizes(  # only checks that everything works: start-up dominates every figure
    count=1_000,
    baseline_count=200,
    latency_seconds=2.0,
    stored=10_000,
    query_requests=20,
    backlog=2_000,
    publish_count=1_000,
    shim_topics=500,
    sequential_requests=50,
    stored_requests=30,
    drain=1_000,
    apply_events=2_000,
    steady=QUICK_STEADY,
)


@dataclass(slots=True)
class Context:
    link: BrokerLink
    workdir: Path
    sizes: Sizes
    seed: int
    timeout: float
    big_store: Path | None = None  # built once, before the rounds, when a scale scenario runs
    tombstone_store: Path | None = None  # as big_store, with only the keys left (the events swept)
    search_store: Path | None = None  # as big_store, with SEARCH on (bench/search.py)
    info: dict[str, Any] = field(default_factory=dict)  # what a repetition reports beside its figures
    latency_linger: float = DEFAULT_LINGER  # the publisher CLI's default
    round: int = 0  # the repetition being measured, from 0

    def run(self, tag: str) -> Run:
        return Run(self.link, self.workdir, tag, self.timeout)


def publisher_args(count: int, envelope_size: int, seed: int) -> list[str]:
    return [
        "--count",
        str(count),
        "--duplicates",
        str(DUPLICATES),
        "--seed",
        str(seed),
        "--envelope-size",
        str(envelope_size),
        "--json",
        "--quiet",
    ]


def _rate(count: int, seconds: float) -> dict[str, float]:
    if seconds <= 0:
        raise BenchError(f"non-positive duration {seconds:.3f}s: clocks disagree")
    return {"events_per_second": count / seconds, "seconds": seconds}


async def _ingest(ctx: Context, tag: str, envelope_size: int, prebuilt: Path | None) -> dict[str, float]:
    count = ctx.sizes.count
    async with ctx.run(tag) as run:
        if prebuilt is not None:
            run.use_store(prebuilt)
        consumer = await run.start_consumer()
        before = run.counters()
        publisher = await run.start("publisher", publisher_args(count, envelope_size, ctx.seed))
        done = await run.wait_received(before.get("received", 0) + count, [consumer, publisher])
        summary = await run.finish(publisher)
        expect_outcome(before, run.counters(), count)
        # The consumer's peak while it ingested (with a pre-filled store: its key filters loaded).
        peak = peak_rss_mb(consumer)
        await run.stop_cleanly(consumer)
    values = _rate(count, done - float(summary["first_publish_at"]))
    values["consumer_peak_rss_mb"] = peak
    values["publish_events_per_second"] = count / (
        float(summary["last_confirm_at"]) - float(summary["first_publish_at"])
    )
    return values


async def e2e_single(ctx: Context, tag: str) -> dict[str, float]:
    return await _ingest(ctx, tag, 1, None)


async def e2e_envelopes(ctx: Context, tag: str) -> dict[str, float]:
    return await _ingest(ctx, tag, 100, None)


async def ingest_at_scale(ctx: Context, tag: str) -> dict[str, float]:
    if ctx.big_store is None:
        raise BenchError("no prebuilt store")
    return await _ingest(ctx, tag, 100, ctx.big_store)


async def ingest_over_tombstones(ctx: Context, tag: str) -> dict[str, float]:
    if ctx.tombstone_store is None:
        raise BenchError("no prebuilt store of tombstones")
    return await _ingest(ctx, tag, 100, ctx.tombstone_store)


async def ceiling(ctx: Context, tag: str) -> dict[str, float]:
    count = ctx.sizes.count
    async with ctx.run(tag) as run:
        bare = await run.start("bench.bare", ["--expect", str(count)])
        await run.wait_attached(bare)
        publisher = await run.start("publisher", publisher_args(count, 1, ctx.seed))
        acked = await run.finish(bare, ctx.timeout)
        summary = await run.finish(publisher)
    values = _rate(count, float(acked["done_at"]) - float(summary["first_publish_at"]))
    values["publish_events_per_second"] = count / (
        float(summary["last_confirm_at"]) - float(summary["first_publish_at"])
    )
    return values


def _bare_args(expect: int) -> list[str]:
    """The reference consumer: aio-pika's consumer API, prefetch 1000, a multiple-ack every 500."""
    return [
        "--expect",
        str(expect),
        "--prefetch",
        str(REFERENCE_PREFETCH),
        "--ack-every",
        str(REFERENCE_ACK_EVERY),
    ]


async def e2e_reference(ctx: Context, tag: str) -> dict[str, float]:
    """The pika pipelined publisher feeding the bare consumer: single-event messages with plain clients."""
    count = ctx.sizes.count
    async with ctx.run(tag) as run:
        bare = await run.start("bench.bare", _bare_args(count))
        await run.wait_attached(bare)
        publisher = await run.start("bench.pika_publisher", ["--count", str(count), "--seed", str(ctx.seed)])
        acked = await run.finish(bare, ctx.timeout)
        summary = await run.finish(publisher)
    values = _rate(count, float(acked["done_at"]) - float(summary["first_publish_at"]))
    values["publish_events_per_second"] = count / (
        float(summary["last_confirm_at"]) - float(summary["first_publish_at"])
    )
    return values


async def _queued(ctx: Context, run: Run, count: int) -> None:
    """Fill the run's queue with `count` single-event messages (20% re-sent) before any consumer starts."""
    publisher = await run.start("publisher", publisher_args(count, 1, ctx.seed))
    await run.finish(publisher, ctx.timeout)


async def drain_reference(ctx: Context, tag: str) -> dict[str, float]:
    """The bare consumer draining a backlog of single-event messages: from attached to the last ack."""
    count = ctx.sizes.drain
    async with ctx.run(tag) as run:
        await _queued(ctx, run, count)
        bare = await run.start("bench.bare", _bare_args(count))
        await run.wait_attached(bare)
        started = time.time()
        acked = await run.finish(bare, ctx.timeout)
    return _rate(count, float(acked["done_at"]) - started)


async def drain_single(ctx: Context, tag: str) -> dict[str, float]:
    """The consumer draining the same backlog: from attached until the store shows every event."""
    count = ctx.sizes.drain
    async with ctx.run(tag) as run:
        await _queued(ctx, run, count)
        consumer = await run.start("consumer", [])
        await run.wait_attached(consumer)
        started = time.time()
        done = await run.wait_received(count, [consumer])
        expect_outcome(dict.fromkeys(("received",), 0), run.counters(), count)
        await run.stop_cleanly(consumer)
    return _rate(count, done - started)


async def _http_load(run: Run, count: int, per_request: int, concurrency: int, seed: int) -> Child:
    return await run.start(
        "bench.http_load",
        [
            "--url",
            run.api_url,
            "--count",
            str(count),
            "--seed",
            str(seed),
            "--per-request",
            str(per_request),
            "--concurrency",
            str(concurrency),
        ],
    )


async def baseline(ctx: Context, tag: str) -> dict[str, float]:
    count = ctx.sizes.baseline_count
    async with ctx.run(tag) as run:
        await run.start_api("bench.baseline")
        before = run.counters()
        load = await _http_load(run, count, 1, BASELINE_CONCURRENCY, ctx.seed)
        done = await run.wait_received(count, [load, *run.children])
        summary = await run.finish(load)
        expect_outcome(before, run.counters(), count)
    return _rate(count, done - float(summary["first_publish_at"]))


async def shim(ctx: Context, tag: str) -> dict[str, float]:
    count = ctx.sizes.count
    async with ctx.run(tag) as run:
        consumer = await run.start_consumer()
        api = await run.start_api()
        before = run.counters()
        load = await _http_load(run, count, SHIM_EVENTS_PER_REQUEST, SHIM_CONCURRENCY, ctx.seed)
        done = await run.wait_received(count, [consumer, api, load])
        summary = await run.finish(load)
        expect_outcome(before, run.counters(), count)
        await run.stop_cleanly(consumer)
    return _rate(count, done - float(summary["first_publish_at"]))


async def pika_publisher(ctx: Context, tag: str) -> dict[str, float]:
    """The reference for publishing single-event messages: pika, 256 unconfirmed at a time."""
    count = ctx.sizes.publish_count
    async with ctx.run(tag) as run:
        await ctx.link.declare(run.topology)
        publisher = await run.start("bench.pika_publisher", ["--count", str(count), "--seed", str(ctx.seed)])
        summary = await run.finish(publisher, ctx.timeout)
    return _rate(count, float(summary["last_confirm_at"]) - float(summary["first_publish_at"]))


async def publisher_single(ctx: Context, tag: str) -> dict[str, float]:
    """The publisher CLI, single-event messages, first publish to last confirm, no consumer."""
    count = ctx.sizes.publish_count
    async with ctx.run(tag) as run:
        publisher = await run.start("publisher", publisher_args(count, 1, ctx.seed))
        summary = await run.finish(publisher, ctx.timeout)
    if int(summary["confirmed"]) != count:
        raise BenchError(f"publisher confirmed {summary['confirmed']} of {count}: {summary['errors']}")
    return _rate(count, float(summary["last_confirm_at"]) - float(summary["first_publish_at"]))


async def pika_roundtrip(ctx: Context, tag: str) -> dict[str, float]:
    """The reference for one publish at a time: pika BlockingConnection, publish and wait for the confirm."""
    count = ctx.sizes.sequential_requests
    async with ctx.run(tag) as run:
        await ctx.link.declare(run.topology)
        child = await run.start(
            "bench.pika_publisher", ["--round-trip", "--count", str(count), "--seed", str(ctx.seed)]
        )
        summary = await run.finish(child, ctx.timeout)
    return {"p50_ms": float(summary["p50_ms"]), "p99_ms": float(summary["p99_ms"])}


async def _shim_client(ctx: Context, tag: str, mode: list[str]) -> dict[str, Any]:
    async with ctx.run(tag) as run:
        await ctx.link.declare(run.topology)
        await run.start_api()
        client = await run.start("bench.shim_client", ["--url", run.api_url, "--seed", str(ctx.seed), *mode])
        return await run.finish(client, ctx.timeout)


async def shim_topics(ctx: Context, tag: str) -> dict[str, float]:
    """One POST /publish of events whose topics are all different, until the api answered (all confirmed)."""
    summary = await _shim_client(ctx, tag, ["--topics", str(ctx.sizes.shim_topics)])
    return {"events_per_second": float(summary["events_per_second"]), "seconds": float(summary["seconds"])}


async def shim_sequential(ctx: Context, tag: str) -> dict[str, float]:
    """One client posting single events one at a time: the time of a request, confirm included."""
    summary = await _shim_client(ctx, tag, ["--sequential", str(ctx.sizes.sequential_requests)])
    return {"p50_ms": float(summary["p50_ms"]), "p99_ms": float(summary["p99_ms"])}


async def _shim_stored(ctx: Context, tag: str, database: ThrowawayDatabase | None) -> dict[str, float]:
    """Sequential single-event POSTs, wait=stored and plain alternating, with the consumer and the api
    running on one store: what read-your-writes costs over a plain publish, measured in the same moments."""
    async with ctx.run(tag) as run:
        run.database = database
        await run.start_consumer()
        await run.start_api()
        args = ["--url", run.api_url, "--seed", str(ctx.seed), "--stored", str(ctx.sizes.stored_requests)]
        client = await run.start("bench.shim_client", args)
        summary = await run.finish(client, ctx.timeout)
    keys = (
        "stored_p50_ms",
        "stored_p99_ms",
        "plain_p50_ms",
        "plain_p99_ms",
        "p50_ratio",
        "blocks_stored_p50_ms",
        "blocks_stored_p99_ms",
        "blocks_plain_p50_ms",
        "blocks_p50_ratio",
    )
    return {key: float(summary[key]) for key in keys}


async def seed003_stored(ctx: Context, tag: str) -> dict[str, float]:
    """What a client of the seed003 aggregator sees with read-your-writes: single-event POSTs one at a time,
    each answered once its event is committed (`?wait=stored`; API_COMPAT=seed003's answers). Its events/s
    counts only events that are durably stored and readable when their answer arrives."""
    async with ctx.run(tag) as run:
        await run.start_consumer()
        await run.start_api(API_COMPAT="seed003")
        args = ["--url", run.api_url, "--seed", str(ctx.seed)]
        args += ["--sequential", str(ctx.sizes.stored_requests), "--wait-stored"]
        client = await run.start("bench.shim_client", args)
        summary = await run.finish(client, ctx.timeout)
    return {key: float(summary[key]) for key in ("events_per_second", "p50_ms", "p99_ms")}


async def shim_stored(ctx: Context, tag: str) -> dict[str, float]:
    return await _shim_stored(ctx, tag, None)


async def shim_stored_postgres(ctx: Context, tag: str) -> dict[str, float]:
    async with ThrowawayDatabase() as database:
        return await _shim_stored(ctx, tag, database)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the value that q% of the samples do not exceed."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


async def latency(ctx: Context, tag: str) -> dict[str, float]:
    sizes = ctx.sizes
    async with ctx.run(tag) as run:
        consumer = await run.start_consumer()
        api = await run.start_api()
        driver = await run.start(
            "bench.latency",
            [
                "--api-url",
                run.api_url,
                "--rate",
                str(sizes.latency_rate),
                "--seconds",
                str(sizes.latency_seconds),
                "--sample-every",
                str(LATENCY_SAMPLE_EVERY),
                "--envelope-size",
                str(LATENCY_ENVELOPE),
                "--linger",
                str(ctx.latency_linger),
            ],
        )
        summary = await run.finish(driver, sizes.latency_seconds + ctx.timeout)
        total = int(summary["events"])
        await run.wait_received(total, [consumer, api])
        await run.stop_cleanly(consumer)
    samples = [float(v) * 1000 for v in summary["latencies"]]
    stamped = [float(v) * 1000 for v in summary["to_stamp"]]
    ctx.info["latencies_ms_in_publish_order"] = [round(v, 1) for v in samples]
    ctx.info["to_received_at_ms_in_publish_order"] = [round(v, 1) for v in stamped]
    if not samples:
        raise BenchError("no latency samples")
    return {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "to_received_at_p50_ms": percentile(stamped, 50),
        "to_received_at_p99_ms": percentile(stamped, 99),
        "samples": len(samples),
        "achieved_rate": float(summary["achieved_rate"]),
    }


async def backlog(ctx: Context, tag: str) -> dict[str, float]:
    count = ctx.sizes.backlog
    async with ctx.run(tag) as run:
        publisher = await run.start("publisher", publisher_args(count, 100, ctx.seed))
        await run.finish(publisher, ctx.timeout)
        consumer = await run.start("consumer", [])
        started = time.time()
        await run.wait_attached(consumer)
        done = await run.wait_received(count, [consumer])
        peak = peak_rss_mb(consumer)
        expect_outcome(dict.fromkeys(("received",), 0), run.counters(), count)
        await run.stop_cleanly(consumer)
    return {"peak_rss_mb": peak, "drain_events_per_second": count / (done - started)}


def peak_rss_mb(child: Child) -> float:
    """The child's peak resident set (VmHWM) in MiB, read while it is still running."""
    status = Path(f"/proc/{child.process.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError("no VmHWM in /proc/<pid>/status (not Linux?)")


QUERY_KINDS = ("events", "events_topic", "events_deep", "events_topic_deep", "stats")


async def queries(ctx: Context, tag: str) -> dict[str, float]:
    """GET /events and /stats latency at scale, requests one at a time, kinds interleaved."""
    if ctx.big_store is None:
        raise BenchError("no prebuilt store")
    middle = encode_cursor(ctx.sizes.stored // 2)
    paths = {
        "events": "/events?limit=100",
        "events_topic": "/events?topic=demo.orders&limit=100",
        "events_deep": f"/events?limit=100&after={middle}",
        "events_topic_deep": f"/events?topic=demo.orders&limit=100&after={middle}",
        "stats": "/stats",
    }
    timings: dict[str, list[float]] = {kind: [] for kind in QUERY_KINDS}
    async with ctx.run(tag) as run:
        await ctx.link.declare(run.topology)  # /stats reports the queue; it must exist
        run.db_path, run.owns_store = ctx.big_store, False  # the api only reads it
        api = await run.start_api()
        async with httpx.AsyncClient(base_url=run.api_url, timeout=10.0) as client:
            for i in range(QUERY_WARMUP + ctx.sizes.query_requests):
                for kind in QUERY_KINDS:
                    started = time.perf_counter()
                    response = await client.get(paths[kind])
                    elapsed = time.perf_counter() - started
                    if response.status_code != 200 or (kind != "stats" and len(response.json()) != 100):
                        raise BenchError(
                            f"GET {paths[kind]}: HTTP {response.status_code} {response.text[:200]}"
                        )
                    if i >= QUERY_WARMUP:
                        timings[kind].append(elapsed * 1000)
        await run.stop_cleanly(api)
    values: dict[str, float] = {}
    for kind, samples in timings.items():
        values[f"{kind}_p50_ms"] = percentile(samples, 50)
        values[f"{kind}_p99_ms"] = percentile(samples, 99)
    values["events_worst_p99_ms"] = max(values[f"{kind}_p99_ms"] for kind in QUERY_KINDS if kind != "stats")
    values["events_median_p50_ms"] = statistics.median(
        values[f"{kind}_p50_ms"] for kind in QUERY_KINDS if kind != "stats"
    )
    return values


async def _postgres_ingest(
    ctx: Context, tag: str, consumers: int, template: str | None = None
) -> dict[str, float]:
    """Envelopes of 100 end to end with the store in a throwaway PostgreSQL database (a copy of `template`,
    a pre-filled store, when given) and N consumers; the CPU each kind of process used while the events went
    through, in cores (CPU seconds per second)."""
    count = ctx.sizes.count
    async with ThrowawayDatabase(template=template) as database, ctx.run(tag) as run:
        run.database = database
        children = [await run.start("consumer", []) for _ in range(consumers)]
        # All of them attached: each has opened (and one has migrated) the store before it consumes.
        await ctx.link.wait_attached(
            run.topology.queue,
            lambda: all(child.returncode is None for child in children),
            START_TIMEOUT,
            why=lambda: "; ".join(why(child) for child in children if child.returncode is not None),
            expected=consumers,
        )
        meter = CpuMeter()
        meter.watch("consumers", [child.process.pid for child in children])
        meter.watch("postgres", await database.backend_pids())
        broker = listener_pid(urlsplit(ctx.link.url).port or 5672)
        if broker is not None:
            meter.watch("broker", [broker])
        before = await run.store_counters()
        publisher = await run.start("publisher", publisher_args(count, 100, ctx.seed))
        meter.watch("publisher", [publisher.process.pid])
        run.meter = meter
        window_start = time.time()
        meter.start()
        done = await run.wait_received(before.get("received", 0) + count, [*children, publisher])
        meter.sample()
        window = time.time() - window_start
        summary = await run.finish(publisher)
        expect_outcome(before, await run.store_counters(), count)
        ctx.info["postgres_server"] = await _server_version(database)
        # The largest consumer's peak (with a pre-filled store: its key buckets' filters loaded).
        peak = max(peak_rss_mb(child) for child in children)
        for child in children:
            await run.stop_cleanly(child)
    values = _rate(count, done - float(summary["first_publish_at"]))
    values["consumer_peak_rss_mb"] = peak
    used = meter.used()
    for group in ("consumers", "postgres", "broker", "publisher"):
        values[f"{group}_cpu_seconds"] = used.get(group, 0.0)
        values[f"{group}_cores"] = used.get(group, 0.0) / window
    values["total_cores"] = sum(used.values()) / window
    values["cpu_window_seconds"] = window
    return values


async def _server_version(database: ThrowawayDatabase) -> str:
    try:
        return await database.server_version()
    except Exception:  # only a label for the report
        return "unknown"


async def postgres_1(ctx: Context, tag: str) -> dict[str, float]:
    return await _postgres_ingest(ctx, tag, 1)


async def postgres_2(ctx: Context, tag: str) -> dict[str, float]:
    return await _postgres_ingest(ctx, tag, 2)


async def postgres_3(ctx: Context, tag: str) -> dict[str, float]:
    return await _postgres_ingest(ctx, tag, 3)


async def postgres_at_scale(ctx: Context, tag: str) -> dict[str, float]:
    """As postgres_3, the store pre-filled with --stored events (compare with postgres_3 of the same run)."""
    return await _postgres_ingest(ctx, tag, 3, await bigstore_postgres.template(ctx.sizes.stored, False))


async def postgres_over_tombstones(ctx: Context, tag: str) -> dict[str, float]:
    """As postgres_at_scale, with only the keys of --stored events left (the events swept)."""
    return await _postgres_ingest(ctx, tag, 3, await bigstore_postgres.template(ctx.sizes.stored, True))


async def sqlite_apply(ctx: Context, tag: str) -> dict[str, float]:
    """The SQLite batch apply alone on one workload: the set-based apply the consumer uses vs the per-event
    loop it replaced (bench/store_apply.py keeps that one as the reference). Each on a fresh store file."""
    from bench import store_apply

    batches = store_apply.workload(ctx.sizes.apply_events, APPLY_BATCH, DUPLICATES, ctx.seed)
    events = sum(len(batch) for batch in batches)
    runs = {"per_event": store_apply.run_per_event, "set_based": store_apply.run_set_based}
    order = list(runs) if ctx.round % 2 == 0 else list(runs)[::-1]
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name in order:  # alternated per round: neither always runs on a warmer page cache
        path = ctx.workdir / f"{tag}-{name}.db"
        # This process does nothing else meanwhile: its CPU time is the apply's (the driver's thread
        # included), which the wall time hides when every commit waits for an fsync of the disk.
        cpu_before = time.process_time()
        try:
            seconds[name] = await runs[name](path, batches)
        finally:
            cpu[name] = time.process_time() - cpu_before
            _remove_sqlite_files(path)
    return {
        "per_event_events_per_second": events / seconds["per_event"],
        "set_based_events_per_second": events / seconds["set_based"],
        "set_based_speedup": seconds["per_event"] / seconds["set_based"],
        "per_event_cpu_us_per_event": cpu["per_event"] / events * 1e6,
        "set_based_cpu_us_per_event": cpu["set_based"] / events * 1e6,
        "set_based_cpu_saving": cpu["per_event"] / cpu["set_based"],
    }


APPLY_BATCH = 256  # the consumer's default BATCH_SIZE


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


Measure = Callable[[Context, str], Awaitable[dict[str, float]]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    label: str
    measure: Measure
    needs_big_store: str | None = None  # "events", "tombstones", "searchable": the pre-filled store


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("e2e_single", "end to end, single-event messages", e2e_single),
    Scenario("e2e_envelopes", "end to end, envelopes of 100", e2e_envelopes),
    Scenario("ceiling", "ceiling: same publish, bare ack-only consumer", ceiling),
    Scenario("e2e_reference", "REFERENCE: pika publisher feeding the bare consumer", e2e_reference),
    Scenario("drain_reference", "REFERENCE: bare aio-pika consumer draining", drain_reference),
    Scenario("drain_single", "consumer draining single-event messages", drain_single),
    Scenario("baseline", "BASELINE: HTTP POST per event, SQLite commit per event", baseline),
    Scenario("shim", "HTTP shim: POST /publish, 500 per request", shim),
    Scenario("pika_publisher", "REFERENCE: pika publisher, 256 unconfirmed", pika_publisher),
    Scenario("publisher_single", "publisher CLI, single-event messages, publish only", publisher_single),
    Scenario("shim_topics", "HTTP shim: one POST, every event its own topic", shim_topics),
    Scenario("pika_roundtrip", "REFERENCE: pika publish + wait for confirm", pika_roundtrip),
    Scenario("shim_sequential", "HTTP shim: single-event POSTs one at a time", shim_sequential),
    Scenario("shim_stored", "HTTP shim: POST ?wait=stored vs plain, one at a time, SQLite", shim_stored),
    Scenario(
        "shim_stored_postgres",
        "HTTP shim: POST ?wait=stored vs plain, one at a time, PostgreSQL",
        shim_stored_postgres,
    ),
    Scenario("seed003_stored", "API_COMPAT=seed003: POST ?wait=stored, one event at a time", seed003_stored),
    Scenario("latency", "publish -> queryable at a steady rate", latency),
    Scenario("ingest_at_scale", "end to end, envelopes of 100, store pre-filled", ingest_at_scale, "events"),
    Scenario(
        "ingest_over_tombstones",
        "end to end, envelopes of 100, store of keys only",
        ingest_over_tombstones,
        "tombstones",
    ),
    Scenario("queries", "GET /events, /stats at scale", queries, "events"),
    Scenario("search_queries", "GET /events?q=, payload.<field>= at scale", search_queries, "searchable"),
    Scenario("backlog", "consumer draining a backlog (envelopes of 100)", backlog),
    Scenario("postgres_1", "end to end, envelopes of 100, PostgreSQL, 1 consumer", postgres_1),
    Scenario("postgres_2", "end to end, envelopes of 100, PostgreSQL, 2 consumers", postgres_2),
    Scenario("postgres_3", "end to end, envelopes of 100, PostgreSQL, 3 consumers", postgres_3),
    Scenario("postgres_at_scale", "as postgres_3, store pre-filled (--stored)", postgres_at_scale),
    Scenario("postgres_over_tombstones", "as postgres_3, store of keys only", postgres_over_tombstones),
    Scenario("sqlite_apply", "SQLite batch apply alone: set-based vs per-event", sqlite_apply),
    Scenario("retention", "steady stream under RETENTION, SQLite", retention),
    Scenario("retention_postgres", "steady stream under RETENTION, PostgreSQL", retention_postgres),
)


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
