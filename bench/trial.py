"""One measured run: a fresh consumer, store and queue; publish N events; time until the store has them all.

The clock starts just before the publisher process is spawned and stops at the first poll of the store that
shows `received == N`, so interpreter start-up, load generation, broker, consumer and fsync are all inside
it: it is what a user waiting for the events to be queryable experiences. Counters are read straight from
SQLite (read-only), not through the api, so no third process competes for the two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq

from bench.broker import BenchError, BrokerLink, fresh_topology
from bench.child import Child
from contract import schema
from contract.topology import Topology

DUPLICATES = 0.2
POLL_INTERVAL = 0.005
ATTACH_TIMEOUT = 60.0
PUBLISHER_EXIT_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class TrialSpec:
    amqp_url: str
    count: int
    envelope_size: int
    seed: int
    timeout: float  # seconds from publisher start until the store must show every event

    @property
    def expected_duplicates(self) -> int:
        return round(self.count * DUPLICATES)

    @property
    def expected_unique(self) -> int:
        return self.count - self.expected_duplicates


@dataclass(slots=True)
class Trial:
    """The outcome of one run; `error` set means it failed and its numbers must not be used."""

    envelope_size: int
    round: int
    error: str | None = None
    seconds: float | None = None  # publisher start → store shows every event
    first_commit: float | None = None  # publisher start → store shows the first event
    attach_seconds: float | None = None  # consumer start → consuming (outside the measurement)
    publisher: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    consumer_exit: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.seconds is not None

    def events_per_second(self, count: int) -> float | None:
        return count / self.seconds if self.ok and self.seconds else None

    def publish_events_per_second(self) -> float | None:
        value = self.publisher.get("events_per_second")
        return float(value) if self.ok and isinstance(value, int | float) else None


def read_counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(name): int(value) for name, value in conn.execute("SELECT name, value FROM counters")}


async def run_trial(spec: TrialSpec, link: BrokerLink, workdir: Path, round_: int, tag: str) -> Trial:
    """Run once; never raises for a failed run (the Trial says why), only for cancellation."""
    trial = Trial(envelope_size=spec.envelope_size, round=round_)
    topology = fresh_topology()
    db_path = workdir / f"{tag}.db"
    env = {
        **os.environ,
        "AMQP_URL": spec.amqp_url,
        "AMQP_EXCHANGE": topology.exchange,
        "AMQP_QUEUE": topology.queue,
        "DB_PATH": str(db_path),
        "LOG_LEVEL": "WARNING",
    }
    consumer: Child | None = None
    publisher: Child | None = None
    reader: sqlite3.Connection | None = None
    link.track(topology)
    try:
        consumer = await Child.start("consumer", [], env, workdir, tag)
        trial.attach_seconds = await link.wait_attached(
            topology.queue, lambda: consumer is not None and consumer.returncode is None, ATTACH_TIMEOUT
        )
        # The consumer creates the store before it connects, so it exists once the consumer is attached.
        reader = schema.open_reader(db_path)
        if any(read_counters(reader).values()):
            raise BenchError(f"store {db_path} is not empty before publishing")

        started = time.perf_counter()
        publisher = await Child.start("publisher", _publisher_args(spec), env, workdir, tag)
        trial.counters, trial.first_commit, done = await _wait_for_store(
            spec, reader, consumer, publisher, started
        )
        trial.seconds = done - started

        try:
            code = await publisher.wait(PUBLISHER_EXIT_TIMEOUT)
        except TimeoutError:
            raise BenchError(
                f"the publisher did not exit {PUBLISHER_EXIT_TIMEOUT:g}s after the store showed every event"
            ) from None
        trial.publisher = _publisher_summary(publisher)
        if code != 0:
            raise BenchError(f"publisher exited with {code}: {_why(publisher)}")
        _check_outcome(spec, trial.counters)

        trial.consumer_exit = await consumer.stop()
        if trial.consumer_exit != 0:
            raise BenchError(f"consumer exited with {trial.consumer_exit} after SIGTERM: {_why(consumer)}")
    except BenchError as exc:
        trial.error = str(exc)
    except (OSError, aiormq.exceptions.AMQPError, sqlite3.Error) as exc:
        # A process that cannot start, a broker that went away, a store that cannot be read.
        trial.error = f"{type(exc).__name__}: {exc}"
    finally:
        if reader is not None:
            reader.close()
        # Also runs after Ctrl-C (the task was cancelled once; awaiting here still works), so children are
        # stopped and the run's names deleted. A second Ctrl-C abandons it.
        await _teardown(link, topology, consumer, publisher, trial)
        _remove_store(db_path)
    return trial


def _remove_store(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


def _publisher_args(spec: TrialSpec) -> list[str]:
    return [
        "--count",
        str(spec.count),
        "--duplicates",
        str(DUPLICATES),
        "--seed",
        str(spec.seed),
        "--envelope-size",
        str(spec.envelope_size),
        "--json",
        "--quiet",
    ]


async def _wait_for_store(
    spec: TrialSpec, reader: sqlite3.Connection, consumer: Child, publisher: Child, started: float
) -> tuple[dict[str, int], float | None, float]:
    """Poll the store every few ms until `received` reaches N; returns counters, first-commit time, end."""
    deadline = started + spec.timeout
    first_commit: float | None = None
    while True:
        counters = read_counters(reader)
        now = time.perf_counter()
        received = counters.get("received", 0)
        if first_commit is None and received > 0:
            first_commit = now - started
        if received >= spec.count:
            return counters, first_commit, now
        if consumer.returncode is not None:
            raise BenchError(f"consumer exited with {consumer.returncode} mid-run: {_why(consumer)}")
        if publisher.returncode not in (None, 0):
            raise BenchError(f"publisher exited with {publisher.returncode}: {_why(publisher)}")
        if now > deadline:
            raise BenchError(
                f"store shows received={received} of {spec.count} after {spec.timeout:g}s "
                f"(publisher {'running' if publisher.returncode is None else 'done'})"
            )
        await asyncio.sleep(POLL_INTERVAL)


def _check_outcome(spec: TrialSpec, counters: dict[str, int]) -> None:
    expected = {
        "received": spec.count,
        "unique_processed": spec.expected_unique,
        "duplicate_dropped": spec.expected_duplicates,
        "invalid": 0,
        "conflicts": 0,
    }
    wrong = {
        name: (counters.get(name), want) for name, want in expected.items() if counters.get(name) != want
    }
    if wrong:
        detail = ", ".join(f"{name}={got} (expected {want})" for name, (got, want) in wrong.items())
        raise BenchError(f"wrong outcome: {detail}")


def _publisher_summary(publisher: Child) -> dict[str, Any]:
    lines = publisher.stdout().strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):
        raise BenchError(f"publisher printed no JSON summary: {_why(publisher)}")
    return summary


def _why(child: Child) -> str:
    return child.stderr_tail() or "(no output on stderr)"


async def _teardown(
    link: BrokerLink, topology: Topology, consumer: Child | None, publisher: Child | None, trial: Trial
) -> None:
    if publisher is not None and publisher.returncode is None:
        publisher.kill()
        await publisher.process.wait()
    if consumer is not None and consumer.returncode is None:
        code = await consumer.stop()
        if trial.consumer_exit is None:
            trial.consumer_exit = code
    try:
        await link.delete(topology)
    except Exception as exc:  # the broker may be gone; the caller retries leftovers and names them
        if trial.error is None:
            trial.error = f"could not delete the run's queues: {type(exc).__name__}: {exc}"
