"""One measured run's world: fresh broker names, a fresh store, its child processes, and their cleanup.

`Run` is an async context manager. Whatever it started is stopped and whatever it declared is deleted when
it exits, even on failure or Ctrl-C. Every wait is bounded; a run that breaks raises BenchError with the
reason (and the tail of the child's stderr), which the caller records instead of a number.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.broker import BenchError, BrokerLink, fresh_topology
from bench.child import Child
from bench.cpu import CpuMeter
from bench.postgres import ThrowawayDatabase

DUPLICATES = 0.2
POLL_INTERVAL = 0.005
START_TIMEOUT = 60.0  # a child process until it consumes or serves
EXIT_TIMEOUT = 30.0


@dataclass(slots=True)
class Sample:
    """One repetition of one scenario; `error` set means it failed and `values` must not be used."""

    scenario: str
    round: int
    values: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = (
        None  # why this repetition measured nothing without failing (an unsupported backend)
    )

    @property
    def ok(self) -> bool:
        return self.error is None


class ScenarioSkipped(BenchError):
    """What a scenario measures is not supported here (a store backend without the feature): not a failure."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(name): int(value) for name, value in conn.execute("SELECT name, value FROM counters")}


def expect_outcome(before: dict[str, int], after: dict[str, int], count: int) -> None:
    """The counters moved by exactly the load: N received, 20% duplicates, nothing invalid."""
    duplicates = round(count * DUPLICATES)
    expected = {
        "received": count,
        "unique_processed": count - duplicates,
        "duplicate_dropped": duplicates,
        "invalid": 0,
        "conflicts": 0,
    }
    moved = {name: after.get(name, 0) - before.get(name, 0) for name in expected}
    wrong = {name: (moved[name], want) for name, want in expected.items() if moved[name] != want}
    if wrong:
        detail = ", ".join(f"{name} moved {got} (expected {want})" for name, (got, want) in wrong.items())
        raise BenchError(f"wrong outcome: {detail}")


def last_json(child: Child) -> dict[str, Any]:
    """The JSON summary a child printed last on stdout."""
    lines = child.stdout().strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):
        raise BenchError(f"{child.module} printed no JSON summary: {why(child)}")
    return summary


def why(child: Child) -> str:
    return child.stderr_tail() or "(no output on stderr)"


def remove_store(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".consumer.json"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    for leftover in db_path.parent.glob(f"{db_path.name}.consumer.json.*.tmp"):  # a writer killed mid-write
        leftover.unlink(missing_ok=True)


class Run:
    def __init__(self, link: BrokerLink, workdir: Path, tag: str, timeout: float) -> None:
        self.link = link
        self.workdir = workdir
        self.tag = tag
        self.timeout = timeout
        self.topology = fresh_topology()
        self.db_path = workdir / f"{tag}.db"
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        self.owns_store = True  # False when db_path is a shared store this run must not delete
        self.children: list[Child] = []
        self._reader: sqlite3.Connection | None = None
        # Set by the PostgreSQL scenarios: the store is this database (DATABASE_URL), not db_path.
        self.database: ThrowawayDatabase | None = None
        # Set when a scenario accounts CPU: sampled at every poll of the store while waiting.
        self.meter: CpuMeter | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "AMQP_URL": self.link.url,
            "AMQP_EXCHANGE": self.topology.exchange,
            "AMQP_QUEUE": self.topology.queue,
            "DB_PATH": str(self.db_path),
            "API_PORT": str(self.port),
            "API_HOST": "127.0.0.1",
            "API_URL": self.api_url,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **({"DATABASE_URL": self.database.url} if self.database is not None else {}),
            **extra,
        }

    async def __aenter__(self) -> Run:
        self.link.track(self.topology)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.close()
        for child in reversed(self.children):
            await child.stop()
        try:
            await self.link.delete(self.topology)
        except Exception:  # the broker may be gone; the caller retries leftovers and names them
            pass
        if self.owns_store:
            remove_store(self.db_path)

    async def start(self, module: str, args: list[str], **env: str) -> Child:
        child = await Child.start(
            module, args, self.env(**env), self.workdir, f"{self.tag}-{len(self.children)}"
        )
        self.children.append(child)
        return child

    def use_store(self, prebuilt: Path) -> None:
        """Start from a copy of a prebuilt store instead of an empty one.

        The copy is flushed to disk first: otherwise the consumer's first checkpoint, whose fsync must write
        back every dirty page of the file, would pay for writing the whole copy inside the measurement.
        """
        shutil.copyfile(prebuilt, self.db_path)
        fd = os.open(self.db_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def start_consumer(self, **env: str) -> Child:
        consumer = await self.start("consumer", [], **env)
        await self.wait_attached(consumer)
        return consumer

    async def wait_attached(self, child: Child) -> None:
        await self.link.wait_attached(
            self.topology.queue, lambda: child.returncode is None, START_TIMEOUT, why=lambda: why(child)
        )

    async def start_api(self, module: str = "api", **env: str) -> Child:
        api = await self.start(module, [], **env)
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5.0) as client:
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        return api
                except httpx.TransportError:
                    pass
                if api.returncode is not None:
                    raise BenchError(f"{module} exited with {api.returncode} at start: {why(api)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{module} did not answer /health within {START_TIMEOUT:g}s: {why(api)}")
                await asyncio.sleep(0.05)

    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
            self._reader = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._reader.execute("PRAGMA busy_timeout = 5000")
        return self._reader

    def counters(self) -> dict[str, int]:
        return read_counters(self.reader())

    async def store_counters(self) -> dict[str, int]:
        """The counters from whichever store this run uses."""
        if self.database is not None:
            return await self.database.counters()
        return self.counters()

    async def wait_received(self, target: int, watch: list[Child]) -> float:
        """Poll the store until `received` reaches target; returns the wall-clock time it was seen."""
        deadline = time.monotonic() + self.timeout
        while True:
            received = (await self.store_counters()).get("received", 0)
            if self.meter is not None:
                self.meter.sample()
            if received >= target:
                return time.time()
            for child in watch:
                if child.returncode not in (None, 0):
                    raise BenchError(f"{child.module} exited with {child.returncode}: {why(child)}")
            if time.monotonic() > deadline:
                raise BenchError(f"store shows received={received} of {target} after {self.timeout:g}s")
            await asyncio.sleep(POLL_INTERVAL)

    async def finish(self, child: Child, timeout: float = EXIT_TIMEOUT) -> dict[str, Any]:
        """Wait for a child that should end by itself; its JSON summary, or BenchError."""
        try:
            code = await child.wait(timeout)
        except TimeoutError:
            raise BenchError(f"{child.module} did not finish within {timeout:g}s: {why(child)}") from None
        if code != 0:
            raise BenchError(f"{child.module} exited with {code}: {why(child)}")
        return last_json(child)

    async def stop_cleanly(self, child: Child) -> None:
        code = await child.stop()
        if code != 0:
            raise BenchError(f"{child.module} exited with {code} after SIGTERM: {why(child)}")
