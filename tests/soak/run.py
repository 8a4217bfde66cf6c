"""One soak run: cluster, store, deployables; traffic and faults for `minutes`; drain; check.

The consumers reach the broker through one proxy per node (tests/harness/proxy.py), which the network faults
cut and slow; their AMQP heartbeat is HEARTBEAT seconds, so a SIGSTOP longer than the broker's heartbeat
timeout has the broker drop them. Everything else talks to the nodes directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from broker import connection as broker_link
from store.sqlite.schema import WAL_AUTOCHECKPOINT_PAGES
from tests.harness.broker import BrokerError
from tests.harness.cluster import Cluster
from tests.harness.private_postgres import PrivatePostgres
from tests.harness.probes import queue_depth
from tests.harness.processes import REPO, Deployment, Processes
from tests.harness.proxy import FreezableProxy
from tests.soak import report
from tests.soak.check import Outcome, final_check
from tests.soak.faults import Injector, Management, System, summary
from tests.soak.resources import KEY_BYTES, Sampler, growth_check, proc_stats
from tests.soak.schedule import schedule
from tests.soak.traffic import Observed, Traffic

log = logging.getLogger("soak")

HEARTBEAT = 4
CONSUMERS = {"sqlite": 1, "postgres": 3}
DRAIN_TIMEOUT = 600.0
CLI_TIMEOUT = 240.0
CLUSTER_ATTEMPTS = 3
# The WAL is checkpointed at WAL_AUTOCHECKPOINT_PAGES (4 KiB pages); a checkpoint that cannot finish (a reader
# holding an old snapshot) would let it grow past that. A tenth over it for the frames of the last commits.
WAL_BOUND_MIB = WAL_AUTOCHECKPOINT_PAGES * 4096 / (1 << 20) * 1.1


@dataclass
class Settings:
    minutes: float
    backend: str
    seed: int
    out: Path
    sample_interval: float = 10.0
    retention: str = "auto"


@dataclass
class Result:
    ok: bool
    problems: list[str] = field(default_factory=list)


def consumer_has_retention() -> bool:
    """Whether this consumer knows RETENTION (its --help lists the variables it reads)."""
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    return "RETENTION" in done.stdout


def sqlite_files(deployment: Deployment) -> dict[str, float]:
    """The database file, and its write-ahead log apart: the WAL is bounded by the checkpoint threshold
    (store/sqlite.py, WAL_AUTOCHECKPOINT_PAGES) and is checked against that bound, not for a slope."""
    base = deployment.db_path
    wal = base.with_name(base.name + "-wal")
    return {
        "store store_mib": base.stat().st_size / (1 << 20),
        "store wal_mib": (wal.stat().st_size if wal.exists() else 0) / (1 << 20),
    }


async def run(settings: Settings) -> Result:
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    seconds = settings.minutes * 60
    consumers = CONSUMERS[settings.backend]
    faults = schedule(settings.seed, seconds, settings.backend, consumers, HEARTBEAT)
    print(f"soak: backend={settings.backend} minutes={settings.minutes:g} seed={settings.seed} out={out}")
    print(f"soak: replay with SOAK_SEED={settings.seed}; the schedule ({len(faults)} faults):")
    for fault in faults:
        print("  " + fault.describe())
    (out / "schedule.txt").write_text("\n".join(f.describe() for f in faults) + "\n")
    sys.stdout.flush()

    # SOAK_RETENTION: "auto" (the default) turns it on when the consumer knows RETENTION, "off" never, a
    # duration always. Auto's retention is short, so that sweeps run all along: a sixth of the run, at least
    # a minute.
    wanted = settings.retention
    retention = wanted != "off" and (wanted != "auto" or consumer_has_retention())
    extra: dict[str, str] = {}
    if retention:
        period = f"{max(60, int(seconds / 6))}s" if wanted == "auto" else wanted
        extra = {"RETENTION": period, "RETENTION_SWEEP_INTERVAL": "10"}
    print(f"soak: retention {'on: ' + json.dumps(extra) if retention else 'off (the consumer has none)'}")

    started = time.monotonic()
    (out / "cluster").mkdir(exist_ok=True)
    cluster = Cluster(out / "cluster", management=True, cli_timeout=CLI_TIMEOUT)
    postgres: PrivatePostgres | None = None
    proxies: list[FreezableProxy] = []
    procs: Processes | None = None
    closers: list[Callable[[], Awaitable[Any]]] = []
    try:
        for attempt in range(1, CLUSTER_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(cluster.start)
                break
            except BrokerError as exc:
                # A node that does not answer rabbitmqctl in minutes on a machine with a load of 15 is the
                # machine, not the product: a new cluster, a bounded number of times.
                log.warning("the cluster did not form (attempt %d): %s", attempt, exc)
                await asyncio.to_thread(cluster.stop)
                if attempt == CLUSTER_ATTEMPTS:
                    raise
                cluster = Cluster(out / "cluster", management=True, cli_timeout=CLI_TIMEOUT)
        database_url = None
        if settings.backend == "postgres":
            postgres = PrivatePostgres()
            await asyncio.to_thread(postgres.start)
            database_url = await asyncio.to_thread(postgres.create_database, "soak")
        name = f"s{uuid.uuid4().hex[:8]}"
        deployment = Deployment(
            amqp_url=cluster.amqp_url,
            exchange=f"{name}.events",
            queue=f"{name}.aggregator",
            db_path=out / "store" / "events.db",
            logs=logs,
            database_url=database_url,
            extra_env={"RECONNECT_INTERVAL": "0.5", **extra},
        )
        procs = Processes(deployment)
        proxies = [FreezableProxy("127.0.0.1", node.port).start() for node in cluster.nodes]
        consumer_env = {
            "AMQP_URL": ",".join(
                f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat={HEARTBEAT}" for proxy in proxies
            ),
            "RETRY_INITIAL": "0.1",
            "RETRY_MAX": "1",
        }
        amqp = await broker_link.connect(cluster.urls, name="soak", reconnect_interval=0.5, attempts=6)
        assert amqp is not None
        closers.append(amqp.close)
        management = Management(cluster)
        closers.append(management.close)
        traffic_calm = asyncio.Event()
        traffic_calm.set()
        system = System(
            cluster=cluster,
            proxies=proxies,
            postgres=postgres,
            procs=procs,
            amqp=amqp,
            management=management,
            observed=Observed(),
            consumer_env=consumer_env,
            api_env={"PUBLISH_TIMEOUT": "3"},
            calm=traffic_calm,
        )
        system.api = system.start_api()
        await _until(lambda: _api_ready(deployment.api_url), 120, "the api up and connected")
        # A quorum queue this young is lost to a kill -9 (tests/harness/broker.py); wait until it is not.
        for queue in (deployment.queue, deployment.dead_letter_queue):
            await asyncio.to_thread(cluster.wait_for_quorum_queue_registration, queue)
        system.consumers = [system.start_consumer() for _ in range(consumers)]
        await _until(lambda: _attached(system), 120, f"{consumers} consumers attached")
        print(f"soak: set up in {time.monotonic() - started:.0f}s")

        traffic = Traffic(
            procs, deployment.api_url, amqp, deployment.exchange, settings.seed, traffic_calm, system.observed
        )
        sampler = Sampler(settings.sample_interval)
        _add_probes(sampler, system, traffic, deployment, postgres)

        t0 = time.monotonic()
        traffic.start()
        injector = Injector(system, faults)
        injector.journal = out / "faults-as-they-ended.txt"
        stop_faults = asyncio.Event()
        faulting = asyncio.create_task(injector.run(t0, stop_faults))
        sampling = asyncio.create_task(_sample_until(sampler, t0, stop_faults, out / "samples.jsonl"))
        progress = asyncio.create_task(_progress(traffic, injector, t0, stop_faults))
        stop_watchdog = asyncio.Event()
        watchdog = asyncio.create_task(system.watchdog(stop_watchdog))
        await asyncio.sleep(seconds)
        traffic_end = time.monotonic() - t0
        stop_faults.set()
        await faulting
        await sampling
        await progress
        print("soak: faults stopped; waiting for the ones under way to recover")
        await injector.finish()
        # Everything back: every node, the database, every consumer running, the network normal.
        for node in cluster.nodes:
            if not node.running:
                await asyncio.to_thread(node.start)
        if postgres is not None and not postgres.running:
            await asyncio.to_thread(postgres.start)
        for proxy in proxies:
            proxy.slow(0.0)
        for slot, consumer in enumerate(system.consumers):
            if consumer.alive:
                consumer.popen.send_signal(signal.SIGCONT)
            else:
                system.consumers[slot] = system.start_consumer()
        if system.api is None or not system.api.alive:
            system.api = system.start_api()
        await _until(lambda: _api_ready(deployment.api_url), 120, "the api up")
        print("soak: stopping the traffic (unconfirmed HTTP requests are re-sent, the CLIs finish)")
        await traffic.stop()
        print("soak: draining")
        drained_in = await _drain(system, traffic, deployment)
        stop_watchdog.set()
        await watchdog
        # Nothing stuck: with every consumer stopped, whatever they held unacked is back in the queue.
        codes = []
        for consumer in system.consumers:
            codes.append(await asyncio.to_thread(consumer.terminate, 60))
        # A connection of its own, bounded: the run's probe connection went through every fault (a 30-minute
        # run once hung here for good on a channel of it whose node had closed the socket).
        left, dead_depth = await asyncio.wait_for(_final_depths(cluster, deployment), 120)
        outcome = await final_check(
            deployment.api_url,
            traffic.ledger.first,
            traffic.confirmed(),
            traffic.poison_confirmed,
            traffic.poison_uncertain,
            dead_depth,
            retention,
        )
        outcome.expect(left == 0, f"nothing stuck in the queue, drained and the consumers stopped ({left})")
        outcome.expect(all(code == 0 for code in codes), f"the consumers stopped cleanly (exits {codes})")
        violations = traffic.observed.violations
        outcome.expect(not violations, f"reads consistent: {violations[:5]}")
        cli_codes = {cli.name: cli.exit_codes for cli in traffic.clis}
        outcome.expect(
            all(codes[-1:] == [0] for codes in cli_codes.values()),
            f"the publisher CLIs ended with exit 0 (exit codes per CLI: {cli_codes})",
        )
        rows = summary(injector.records)
        unrecovered = [r.line() for r in injector.records if not r.skipped and r.recovered is None]
        outcome.expect(not unrecovered, f"every fault recovered ({len(unrecovered)} did not)")
        outcome.expect(
            not system.crashes, f"no consumer or api exited by itself ({len(system.crashes)} did; see below)"
        )
        # The soak driver keeps every event it sent, for the check: it grows by design.
        skip = ["soak-driver rss_mib", "store store_mib"]
        skip.append("store store_bytes_per_event" if retention else "store store_mib_less_tombstones")
        growth = growth_check(sampler.samples, 0.0, traffic_end, skip)
        outcome.expect(all(g.ok for g in growth), "no resource keeps growing")
        wal = max((s.values.get("store wal_mib", 0.0) for s in sampler.samples), default=0.0)
        outcome.expect(
            wal <= WAL_BOUND_MIB, f"the SQLite WAL stayed within {WAL_BOUND_MIB:.0f} MiB (largest {wal:.1f})"
        )
        figures = {
            "backend": settings.backend,
            "minutes": settings.minutes,
            "seed": settings.seed,
            "retention": extra or None,
            "traffic_seconds": round(traffic_end, 1),
            "drained_in_s": round(drained_in, 1),
            "sent": dict(traffic.ledger.sent),
            "resent": dict(traffic.ledger.resent),
            "http_answers": dict(traffic.observed.http_answers),
            "reads_ok": traffic.observed.reads_ok,
            "read_errors": traffic.observed.read_errors,
            "pages": traffic.observed.pages,
            "cli_exit_codes": cli_codes,
            "probe_errors": sampler.errors,
            "crashes": system.crashes,
            **outcome.figures,
        }
        text = report.write(
            out, figures, rows, injector.records, outcome, growth, sampler.samples, traffic_end
        )
        print(text)
        problems = [line for line in outcome.lines if line.startswith("FAILED")]
        problems += [g.line() for g in growth if not g.ok]
        problems += unrecovered
        problems += system.crashes
        return Result(outcome.ok, problems)
    finally:
        for closing in closers:
            with contextlib.suppress(Exception):
                await closing()
        if procs is not None:
            procs.close()
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.close()
        if postgres is not None:
            await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(cluster.stop)


async def _until(probe: Callable[[], Awaitable[bool]], timeout: float, message: str) -> None:
    """Like tests/harness/waiting.py's eventually, but a SetupError from the probe ends the wait at once."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if await probe():
                return
        except SetupError:
            raise
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.25)
    raise SetupError(f"{message} not reached within {timeout:g}s; last probe gave {last!r}")


async def _api_ready(api_url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(api_url + "/health")
        return response.status_code == 200 and response.json()["broker"]["status"] == "connected"


async def _attached(system: System) -> bool:
    for consumer in system.consumers:
        if not consumer.alive:
            # Not a probe failure to wait out: say why it ended.
            raise SetupError(
                f"a consumer exited at start ({consumer.popen.returncode}):\n{consumer.output()[-3000:]}"
            )
    return await system.all_consumers_attached()


class SetupError(Exception):
    """The deployables could not be started; the soak cannot run."""


async def _drain(system: System, traffic: Traffic, deployment: Deployment) -> float:
    """Wait until the queue is empty and `received` stopped moving; seconds it took."""
    began = time.monotonic()
    last = -1
    steady_since = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() - began < DRAIN_TIMEOUT:
            try:
                depth = await asyncio.wait_for(queue_depth(system.amqp, deployment.queue), 10)
                received = int((await system.stats(client))["received"])
            except Exception:
                await asyncio.sleep(0.5)
                continue
            if depth != 0 or received != last:
                last, steady_since = received, time.monotonic()
            elif time.monotonic() - steady_since > 5:
                return time.monotonic() - began
            await asyncio.sleep(0.5)
    raise AssertionError(f"the queue did not drain within {DRAIN_TIMEOUT:.0f}s")


async def _final_depths(cluster: Cluster, deployment: Deployment) -> tuple[int, int]:
    connection = await broker_link.connect(
        cluster.urls, name="soak-final", reconnect_interval=0.5, attempts=6
    )
    assert connection is not None
    async with connection:
        return (
            await queue_depth(connection, deployment.queue),
            await queue_depth(connection, deployment.dead_letter_queue),
        )


async def _sample_until(sampler: Sampler, t0: float, stop: asyncio.Event, path: Path) -> None:
    while not stop.is_set():
        # Each probe bounded, so that one hung probe cannot stop the sampling.
        await asyncio.wait_for(sampler.sample(t0), sampler.interval * 3)
        # Written as it goes: a run that never reaches its report still leaves its samples.
        with path.open("a") as out:
            out.write(json.dumps({"t": sampler.samples[-1].t, **sampler.samples[-1].values}) + "\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), sampler.interval)


async def _progress(traffic: Traffic, injector: Injector, t0: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 60)
        done = sum(1 for r in injector.records if r.recovered is not None)
        print(
            f"soak: {time.monotonic() - t0:6.0f}s  sent {sum(traffic.ledger.sent.values())}  "
            f"received {traffic.observed.received}  faults {len(injector.records)} ({done} recovered)  "
            f"read errors {traffic.observed.read_errors}",
            flush=True,
        )


# The PostgreSQL store's size in parts (indexes and TOAST included): the key buckets, the events' partitions,
# the rest of the store's tables, and the system catalogs.
STORE_PARTS = r"""
    SELECT
      COALESCE(SUM(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname LIKE 'event\_keys\_b%'), 0) AS keys,
      COALESCE(SUM(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname LIKE 'events\_p\_%'), 0) AS events,
      COALESCE(SUM(pg_total_relation_size(c.oid)) FILTER (
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND c.relname NOT LIKE 'event\_keys\_b%' AND c.relname NOT LIKE 'events\_p\_%'), 0) AS other,
      COALESCE(SUM(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname = 'pg_catalog'), 0) AS catalog
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
"""


def _add_probes(
    sampler: Sampler,
    system: System,
    traffic: Traffic,
    deployment: Deployment,
    postgres: PrivatePostgres | None,
) -> None:
    def per_process() -> dict[str, float]:
        values: dict[str, float] = {}
        groups: dict[str, tuple[list[int], bool]] = {
            f"consumer-{slot}": ([p.popen.pid] if p.alive else [], False)
            for slot, p in enumerate(system.consumers)
        }
        groups["api"] = ([system.api.popen.pid] if system.api and system.api.alive else [], False)
        for cli in traffic.clis:
            groups[cli.name] = ([cli.process.popen.pid] if cli.process and cli.process.alive else [], False)
        for n, node in enumerate(system.cluster.nodes, 1):
            groups[f"rabbit-{n}"] = (node.pids(), False)
        if postgres is not None:
            groups["postgres"] = (postgres.group_pids(), True)
        groups["soak-driver"] = ([os.getpid()], False)
        for name, (pids, pss) in groups.items():
            stats = proc_stats(pids, pss)
            for metric, value in (stats or {}).items():
                values[f"{name} {metric}"] = value
        return values

    async def broker() -> dict[str, float]:
        return {f"broker {k}": float(v) for k, v in (await system.management.totals()).items()}

    async def queue() -> dict[str, float]:
        return {"queue queue_depth": float(await queue_depth(system.amqp, deployment.queue))}

    async def store() -> dict[str, float]:
        unique = traffic.observed.last_counters.get("unique_processed", 0)
        if postgres is not None:
            assert deployment.database_url is not None
            conn = await asyncpg.connect(postgres.url("soak"), timeout=5)
            try:
                size = float(await conn.fetchval("SELECT pg_database_size('soak')"))
                parts = await conn.fetchrow(STORE_PARTS)
                clients = float(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = 'soak' AND pid <> pg_backend_pid()"
                    )
                )
            finally:
                await conn.close()
            values = {"store store_mib": size / (1 << 20), "postgres pg_connections": clients}
            values.update({f"store {name}_mib": float(value) / (1 << 20) for name, value in parts.items()})
        else:
            values = sqlite_files(deployment)
        if unique:
            values["store store_bytes_per_event"] = values["store store_mib"] * (1 << 20) / unique
            if postgres is not None:
                # The key buckets' own size, measured: what a key costs depends on the bucket size (a bucket's
                # tables and indexes have a fixed part), and the soak's buckets may be small.
                tombstones = values["store keys_mib"]
            else:
                tombstones = unique * KEY_BYTES["sqlite"] / (1 << 20)
            values["store store_mib_less_tombstones"] = values["store store_mib"] - tombstones
        return values

    sampler.add("processes", per_process)
    sampler.add("broker", broker)
    sampler.add("queue", queue)
    sampler.add("store", store)


async def _cancellable(work: Coroutine[Any, Any, Result]) -> Result:
    """SIGTERM or SIGINT cancels the run, so that its clean-up (nodes, database, processes) still runs."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    return await task


def main(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        handlers=[logging.FileHandler(settings.out / "soak.log"), logging.StreamHandler(sys.stderr)]
        if settings.out.is_dir()
        else None,
    )
    for noisy in ("httpx", "tests.harness.broker", "tests.harness.cluster"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Every reconnect of the soak's own probe connection, with a traceback; broker/connection.py says it once.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    result = asyncio.run(_cancellable(run(settings)))
    if result.ok:
        print("soak: PASSED")
        return 0
    print("soak: FAILED")
    for line in result.problems:
        print("  " + line)
    return 1


__all__ = ["Outcome", "Settings", "main"]
