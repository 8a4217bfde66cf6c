"""Carries out the fault schedule on the real processes, logs each fault with its time, measures recovery.

Recovery is the time from the fault (for a kill) or from its end (a SIGSTOP's SIGCONT, the end of a slowed
network) until the system is consuming again: the queue has all its consumers back, and the store's
`received` counter has moved past what it was when the fault began. For the api it is the time until
/health answers 200 with the broker connected. Faults overlap, so a recovery can include another fault's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from aio_pika.abc import AbstractRobustConnection

from tests.harness.cluster import Cluster, ClusterNode
from tests.harness.private_postgres import PrivatePostgres
from tests.harness.probes import consumer_count
from tests.harness.processes import Process, Processes
from tests.harness.proxy import FreezableProxy
from tests.soak.schedule import Fault
from tests.soak.traffic import Observed

log = logging.getLogger("soak.faults")

RECOVERY_TIMEOUT = 240.0
POLL = 0.25
PROBE_TIMEOUT = 10.0
# consumer/service.py's line once its subscription is up.
CONSUMING = "consuming queue="
# A consumer is killed only after consuming for this long.
MIN_CONSUMING = 3.0


class Management:
    """The cluster's management HTTP API, asked of whichever node is running."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.client = httpx.AsyncClient(auth=("guest", "guest"), timeout=5)

    async def get(self, path: str) -> Any:
        error: Exception | None = None
        for node in self.cluster.running():
            if node.management_url is None:
                continue
            try:
                response = await self.client.get(node.management_url + path)
                response.raise_for_status()
                return response.json()
            except (httpx.HTTPError, ValueError) as exc:
                error = exc
        raise RuntimeError(f"no management API answered {path}: {error!r}")

    async def queue(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get(f"/api/queues/%2F/{quote(name, safe='')}")
        return result

    async def leader(self, queue: str) -> str:
        return str((await self.queue(queue))["leader"])

    async def totals(self) -> dict[str, int]:
        totals = (await self.get("/api/overview"))["object_totals"]
        return {"amqp_connections": int(totals["connections"]), "amqp_channels": int(totals["channels"])}

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Record:
    """One fault as it happened."""

    fault: Fault
    began: float  # seconds after the traffic started
    target: str = ""
    waited: float = 0.0  # seconds it waited for the previous fault of its kind to be over
    recovered: float | None = None  # seconds from the fault (or its end) to consuming/answering again
    note: str = ""
    skipped: bool = False  # nothing to do (its target was already dead)

    def line(self) -> str:
        took = "NOT RECOVERED" if self.recovered is None else f"recovered in {self.recovered:.2f}s"
        waited = f" (waited {self.waited:.1f}s)" if self.waited > 0.05 else ""
        return f"{self.began:8.2f}s  {self.fault.kind:<13} {self.target:<28} {took}{waited} {self.note}"


@dataclass
class System:
    """Everything the faults act on."""

    cluster: Cluster
    proxies: list[FreezableProxy]
    postgres: PrivatePostgres | None
    procs: Processes
    amqp: AbstractRobustConnection
    management: Management
    observed: Observed
    consumer_env: dict[str, str]
    api_env: dict[str, str]
    consumers: list[Process] = field(default_factory=list)
    api: Process | None = None
    # Set while every broker node is up (poison is sent only then).
    calm: asyncio.Event = field(default_factory=asyncio.Event)
    # Pids the faults killed; any other exit of a consumer or the api is a crash, listed here.
    killed: set[int] = field(default_factory=set)
    stopped: set[int] = field(default_factory=set)  # SIGSTOPped right now
    consuming_since: dict[int, float] = field(default_factory=dict)  # pid -> when first seen consuming
    crashes: list[str] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return self.procs.deployment.queue

    def start_consumer(self) -> Process:
        return self.procs.consumer(**self.consumer_env)

    def start_api(self) -> Process:
        return self.procs.api(**self.api_env)

    def kill9(self, process: Process) -> None:
        """SIGKILL as a fault: the watchdog then knows this death was the soak's doing."""
        self.killed.add(process.popen.pid)
        process.popen.send_signal(signal.SIGKILL)

    async def watchdog(self, stop: asyncio.Event) -> None:
        """A consumer or api that exits by itself is a defect: record it, and restart it as a supervisor
        would, so that the run goes on and shows whatever else there is."""
        while not stop.is_set():
            slots: list[tuple[str, int, Process | None]] = [
                ("consumer", n, p) for n, p in enumerate(self.consumers)
            ]
            slots.append(("api", 0, self.api))
            for process in self.consumers:
                if process.alive and process.popen.pid not in self.consuming_since:
                    if CONSUMING in process.output():
                        self.consuming_since[process.popen.pid] = time.monotonic()
            for role, slot, process in slots:
                if process is None or process.alive or process.popen.pid in self.killed:
                    continue
                tail = "\n".join(process.output().splitlines()[-12:])
                self.crashes.append(
                    f"{role} pid {process.popen.pid} exited {process.popen.returncode}:\n{tail}"
                )
                log.error("%s", self.crashes[-1])
                if role == "api":
                    self.api = self.start_api()
                else:
                    self.consumers[slot] = self.start_consumer()
                self.retire(process)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def retire(self, process: Process) -> None:
        """A dead process's log file is closed: the soak would otherwise keep one open per restart."""
        if not process.alive:
            process.close()

    async def stats(self, client: httpx.AsyncClient) -> dict[str, Any]:
        sent_at = time.monotonic()
        response = await client.get(self.procs.deployment.api_url + "/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        self.observed.saw_stats(data, sent_at)
        return data

    async def all_consumers_attached(self) -> bool:
        return await asyncio.wait_for(consumer_count(self.amqp, self.queue), PROBE_TIMEOUT) == len(
            self.consumers
        )

    async def consuming_attached(self) -> bool:
        """Every consumer process that got as far as consuming (and still runs) is attached to the queue:
        one still starting (a kill's replacement) does not hold up the recovery of another fault."""
        running = [
            p
            for p in self.consumers
            if p.alive and p.popen.pid not in self.stopped and CONSUMING in p.output()
        ]
        attached = await asyncio.wait_for(consumer_count(self.amqp, self.queue), PROBE_TIMEOUT)
        return bool(running) and attached >= len(running)


class Injector:
    """Runs each fault at its time, each in its own task; the log of what happened is `records`."""

    def __init__(self, system: System, faults: list[Fault]) -> None:
        self.system = system
        self.faults = faults
        self.records: list[Record] = []
        self._broker_lock = asyncio.Lock()
        self._db_lock = asyncio.Lock()
        self._slot_locks: dict[int, asyncio.Lock] = {}
        self._pending: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(timeout=5)
        self._t0 = 0.0
        # Every fault's line is appended here as it ends, so that a run cut short still leaves its faults.
        self.journal: Path | None = None

    def now(self) -> float:
        return time.monotonic() - self._t0

    async def run(self, t0: float, stop: asyncio.Event) -> None:
        """Start each fault at its time until `stop` is set; the faults under way finish on their own."""
        self._t0 = t0
        for fault in self.faults:
            delay = fault.at - self.now()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            if stop.is_set():
                return
            self._tasks.append(asyncio.create_task(self._one(fault)))

    async def finish(self) -> None:
        await asyncio.gather(*self._tasks)
        await self._client.aclose()

    async def _one(self, fault: Fault) -> None:
        record = Record(fault, self.now())
        self.records.append(record)
        action: Callable[[Record], Awaitable[None]] = getattr(self, f"_{fault.kind}")
        try:
            await action(record)
        except Exception as exc:
            record.note += f" FAILED: {exc!r}"
            log.exception("fault %s failed", fault.describe())
        log.info("fault %s", record.line())
        if self.journal is not None:
            with self.journal.open("a") as out:
                out.write(record.line() + "\n")

    async def _received(self) -> int:
        try:
            return int((await self.system.stats(self._client))["received"])
        except (httpx.HTTPError, ValueError, KeyError):
            return self.system.observed.received

    async def _consuming_again(
        self, base: int, since: float, replacement: Process | None = None
    ) -> float | None:
        """Seconds from `since` until every consumer that was consuming is attached again (and the
        `replacement` of a killed one is consuming), and `received` passed `base`."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                replaced = replacement is None or CONSUMING in replacement.output()
                if replaced and await self.system.consuming_attached() and await self._received() > base:
                    return self.now() - since
            except Exception:  # the probe's own connection may be failing over
                pass
            await asyncio.sleep(POLL)
        return None

    async def _api_answers(self, since: float) -> float | None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        api_url = self.system.procs.deployment.api_url
        while time.monotonic() < deadline:
            try:
                response = await self._client.get(api_url + "/health")
                if response.status_code == 200 and response.json()["broker"]["status"] == "connected":
                    return self.now() - since
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(POLL)
        return None

    async def _until_consuming(self, record: Record, slot: int) -> Process:
        """The slot's consumer once it is consuming: killing or stopping a process that is still importing
        Python (seconds on a loaded machine) would prove nothing. The wait is recorded."""
        asked = self.now()
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            process = self.system.consumers[slot]
            if process.alive and CONSUMING in process.output():
                since = self.system.consuming_since.setdefault(process.popen.pid, time.monotonic())
                # It has been consuming for a while: a kill hits a consumer at work, with batches in flight.
                if time.monotonic() - since >= MIN_CONSUMING:
                    break
            await asyncio.sleep(POLL)
        record.waited = self.now() - asked
        return self.system.consumers[slot]

    async def _consumer_kill(self, record: Record) -> None:
        system = self.system
        slot = record.fault.target
        # One kill of a slot at a time: a kill due while the slot's last victim is still being replaced
        # waits for the replacement to be consuming, and then kills that one.
        if self._pending.get(slot, 0):
            # On a loaded machine a restart can take longer than the schedule's interval; one kill waits for
            # the slot, the ones due meanwhile are dropped rather than piled up (they would otherwise kill
            # each replacement the moment it starts consuming).
            record.target = f"consumer {slot}"
            record.note, record.skipped = "skipped: a kill of this slot is already waiting", True
            return
        self._pending[slot] = self._pending.get(slot, 0) + 1
        async with self._slot_locks.setdefault(slot, asyncio.Lock()):
            victim = await self._until_consuming(record, slot)
            self._pending[slot] -= 1
            base = await self._received()
            began = self.now()
            record.target = f"consumer {slot} pid {victim.popen.pid}"
            if not victim.alive:
                record.note, record.skipped = "skipped: not consuming within the bound", True
                return
            system.kill9(victim)
            await asyncio.to_thread(victim.popen.wait, 10)
            await asyncio.sleep(record.fault.duration)
            replacement = system.consumers[slot] = system.start_consumer()
            system.retire(victim)
        record.recovered = await self._consuming_again(base, began, replacement)

    async def _consumer_stop(self, record: Record) -> None:
        slot = record.fault.target
        victim = await self._until_consuming(record, slot)
        record.target = f"consumer {slot} pid {victim.popen.pid}"
        if not victim.alive:
            record.note, record.skipped = "skipped: already dead", True
            return
        self.system.stopped.add(victim.popen.pid)
        victim.popen.send_signal(signal.SIGSTOP)
        await asyncio.sleep(record.fault.duration)
        base = await self._received()
        resumed = self.now()
        self.system.stopped.discard(victim.popen.pid)
        if victim.alive:
            victim.popen.send_signal(signal.SIGCONT)
        else:
            record.note = "killed while stopped"
        record.recovered = await self._consuming_again(base, resumed)

    async def _api_kill(self, record: Record) -> None:
        system = self.system
        asked = self.now()
        # Only an api that answers is killed (a restart takes seconds on a loaded machine).
        await self._api_answers(asked)
        record.waited = self.now() - asked
        victim = system.api
        assert victim is not None
        began = self.now()
        record.target = f"api pid {victim.popen.pid}"
        system.kill9(victim)
        await asyncio.to_thread(victim.popen.wait, 10)
        await asyncio.sleep(record.fault.duration)
        system.api = system.start_api()
        system.retire(victim)
        record.recovered = await self._api_answers(began)

    async def _node(self, record: Record, pick: Callable[[], Awaitable[ClusterNode]]) -> None:
        system = self.system
        asked = self.now()
        async with self._broker_lock:
            record.waited = self.now() - asked
            node = await pick()
            base = await self._received()
            began = self.now()
            record.target = node.node_name.split("@")[0]
            system.calm.clear()
            await asyncio.to_thread(node.kill)
            consuming = asyncio.create_task(self._led_and_consuming(node, base, began))
            await asyncio.sleep(record.fault.duration)
            await asyncio.to_thread(node.start)
            rejoined = await self._all_online(began)
            system.calm.set()
            record.recovered = await consuming
            record.note = (
                "rejoined: not within the bound"
                if rejoined is None
                else f"3 members online after {rejoined:.1f}s"
            )

    async def _led_and_consuming(self, killed: ClusterNode, base: int, since: float) -> float | None:
        """Consuming again once the queue has a leader on a node that runs (a new one if it was the killed
        node's): until then a consumer can still be working through what it had prefetched."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        running = {node.node_name for node in self.system.cluster.nodes if node is not killed}
        while time.monotonic() < deadline:
            try:
                if await self.system.management.leader(self.system.queue) in running:
                    break
            except Exception:
                pass
            await asyncio.sleep(POLL)
        else:
            return None
        return await self._consuming_again(max(base, await self._received()), since)

    async def _all_online(self, since: float) -> float | None:
        everyone = {node.node_name for node in self.system.cluster.nodes}
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        queues = (self.system.queue, self.system.procs.deployment.dead_letter_queue)
        while time.monotonic() < deadline:
            try:
                online = [set((await self.system.management.queue(q)).get("online", [])) for q in queues]
                if all(members == everyone for members in online):
                    return self.now() - since
            except Exception:
                pass
            await asyncio.sleep(1.0)
        return None

    async def _leader_kill(self, record: Record) -> None:
        cluster = self.system.cluster

        async def leader() -> ClusterNode:
            name = await self.system.management.leader(self.system.queue)
            return next(node for node in cluster.nodes if node.node_name == name)

        await self._node(record, leader)
        record.target += " (leader)"

    async def _node_kill(self, record: Record) -> None:
        node = self.system.cluster.nodes[record.fault.target]

        async def chosen() -> ClusterNode:
            return node

        await self._node(record, chosen)

    async def _db(self, record: Record, graceful: bool) -> None:
        postgres = self.system.postgres
        assert postgres is not None
        asked = self.now()
        async with self._db_lock:
            record.waited = self.now() - asked
            base = await self._received()
            began = self.now()
            record.target = f"PostgreSQL :{postgres.port}"
            await asyncio.to_thread(postgres.shutdown if graceful else postgres.kill)
            await asyncio.sleep(record.fault.duration)
            await asyncio.to_thread(postgres.start)
            record.recovered = await self._consuming_again(base, began)

    async def _db_restart(self, record: Record) -> None:
        await self._db(record, graceful=True)

    async def _db_kill(self, record: Record) -> None:
        await self._db(record, graceful=False)

    async def _net_cut(self, record: Record) -> None:
        base = await self._received()
        began = self.now()
        record.target = "consumers <-> broker"
        for proxy in self.system.proxies:
            proxy.cut()
        record.recovered = await self._consuming_again(base, began)

    async def _net_slow(self, record: Record) -> None:
        record.target = f"consumers <-> broker +{record.fault.delay * 1000:.0f}ms"
        for proxy in self.system.proxies:
            proxy.slow(record.fault.delay)
        await asyncio.sleep(record.fault.duration)
        for proxy in self.system.proxies:
            proxy.slow(0.0)
        base = await self._received()
        ended = self.now()
        record.recovered = await self._consuming_again(base, ended)


def summary(records: list[Record]) -> list[dict[str, Any]]:
    """One row per kind of fault: count, recovered, median and max recovery."""
    rows = []
    for kind in sorted({r.fault.kind for r in records}):
        mine = [r for r in records if r.fault.kind == kind and not r.skipped]
        skipped = sum(1 for r in records if r.fault.kind == kind and r.skipped)
        times = [r.recovered for r in mine if r.recovered is not None]
        rows.append(
            {
                "kind": kind,
                "count": len(mine),
                "recovered": len(times),
                "median_s": round(statistics.median(times), 2) if times else None,
                "max_s": round(max(times), 2) if times else None,
                "failed": sum(1 for r in mine if r.recovered is None or "FAILED" in r.note),
                "skipped": skipped,
            }
        )
    return rows
