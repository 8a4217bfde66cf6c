"""The soak's traffic, all of it running for the whole run: what is sent, what was confirmed, what was read.

- Two publisher CLIs over AMQP (`python -m publisher --file -`), one sending single-event messages, one
  envelopes, each fed NDJSON on its stdin at a steady rate and writing its own `--confirmed-log`.
- Two HTTP clients: single events, and batches (a third of them with `?wait=stored`). A 200 or 202 is a
  confirm; anything else leaves the events to be re-sent with the next request.
- A reader paging `/events` and reading `/stats`; every counter it sees must never go backwards, and every
  /stats must satisfy received == unique_processed + duplicate_dropped + invalid.
- A fixed share of every source's events (RESEND_SHARE) are re-sends of an event sent earlier, drawn from
  the whole history, so some come long after their original.
- Poison: now and then a message that can never be processed, straight to the exchange with publisher
  confirms; the dead letters must be exactly these.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractRobustConnection

from contract import event as wire
from contract.event import Event
from contract.schema import COUNTERS
from publisher.check import read_confirmed
from tests.harness.processes import Process, Processes

log = logging.getLogger("soak.traffic")

Key = tuple[str, str]
TOPICS = 8
RESEND_SHARE = 0.2
# Events per second from each source.
RATES = {"cli-single": 10.0, "cli-envelopes": 50.0, "http-single": 5.0, "http-batch": 25.0}
HTTP_BATCH = 25
POISON_EVERY = (20.0, 60.0)


@dataclass
class Ledger:
    """Every event any source sent (its first copy per key) and what was confirmed outside the CLIs' logs."""

    rng: random.Random
    first: dict[Key, Event] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)
    http_confirmed: set[Key] = field(default_factory=set)
    sent: Counter[str] = field(default_factory=Counter)
    resent: Counter[str] = field(default_factory=Counter)
    _seq: int = 0

    def new_event(self, source: str) -> Event:
        self._seq += 1
        start = datetime(2026, 1, 1, tzinfo=UTC)
        item = Event(
            topic=f"soak.t{self.rng.randrange(TOPICS)}",
            event_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            timestamp=(start + timedelta(milliseconds=self._seq)).isoformat().replace("+00:00", "Z"),
            source=source,
            payload={"seq": self._seq, "level": self.rng.choice(("info", "warn", "error")), "text": "soak"},
        )
        self.first[item.key()] = item
        self.history.append(item)
        return item

    def events(self, source: str, count: int) -> list[Event]:
        """`count` events for a source: RESEND_SHARE of them re-sends of any earlier event, verbatim."""
        out = []
        for _ in range(count):
            if self.history and self.rng.random() < RESEND_SHARE:
                out.append(self.history[self.rng.randrange(len(self.history))])
                self.resent[source] += 1
            else:
                out.append(self.new_event(source))
            self.sent[source] += 1
        return out


@dataclass
class Observed:
    """What the reader and the probes saw of the api."""

    received: int = 0
    last_counters: dict[str, int] = field(default_factory=dict)
    reads_ok: int = 0
    read_errors: int = 0
    pages: int = 0
    violations: list[str] = field(default_factory=list)
    http_answers: Counter[str] = field(default_factory=Counter)

    # (answered at, the highest value of each counter answered by then), in answer order.
    _answers: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def saw_stats(self, data: dict[str, Any], sent_at: float) -> None:
        """One /stats answer, to a request sent at `sent_at` (time.monotonic()). Each answer must be a
        consistent snapshot, and no counter may be below what an answer given before this request was sent
        showed. Two requests in flight at once (the reader's and a fault's probe) may be answered in either
        order: the later-sent one may hold the earlier snapshot, and that is not going back."""
        c = {name: int(data[name]) for name in COUNTERS}
        if c["received"] != c["unique_processed"] + c["duplicate_dropped"] + c["invalid"]:
            self.violations.append(f"/stats inconsistent: {c}")
        seen = bisect.bisect_right(self._answers, sent_at, key=lambda answer: answer[0])
        floor = self._answers[seen - 1][1] if seen else {}
        for name, value in c.items():
            if value < floor.get(name, 0):
                self.violations.append(
                    f"/stats counter {name} went back from {floor[name]} (answered before this request was"
                    f" sent) to {value}"
                )
        highest = {name: max(value, self.last_counters.get(name, 0)) for name, value in c.items()}
        self._answers.append((time.monotonic(), highest))
        self.last_counters = highest
        self.received = highest["received"]


class CliFeeder:
    """One publisher CLI over AMQP, fed NDJSON on stdin; restarted if it ever exits before the end."""

    def __init__(self, procs: Processes, name: str, args: list[str], logs: Path, env: dict[str, str]) -> None:
        self.procs = procs
        self.name = name
        self.args = args
        self.env = env
        self.confirmed_log = logs / f"confirmed-{name}.jsonl"
        self.process: Process | None = None
        self.restarts = 0
        self.exit_codes: list[int] = []

    def start(self) -> None:
        self.process = self.procs.start(
            "publisher",
            "--file",
            "-",
            *self.args,
            "--confirmed-log",
            str(self.confirmed_log),
            "--json",
            "--quiet",
            stdin=b"",
            keep_stdin=True,
            **self.env,
        )

    def _write(self, data: bytes) -> bool:
        process = self.process
        if process is None or process.popen.stdin is None:
            return False
        try:
            process.popen.stdin.write(data)
            process.popen.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    async def send(self, events: list[Event]) -> None:
        data = b"".join(wire.encode([item]) + b"\n" for item in events)
        if await asyncio.to_thread(self._write, data):
            return
        process = self.process
        code = process.popen.wait(30) if process is not None else -1
        log.error("%s: the publisher exited with %s mid-run; starting another", self.name, code)
        self.exit_codes.append(code)
        self.restarts += 1
        self.start()

    async def finish(self, timeout: float) -> int:
        process = self.process
        assert process is not None and process.popen.stdin is not None
        process.popen.stdin.close()
        code = await asyncio.to_thread(process.popen.wait, timeout)
        self.exit_codes.append(code)
        return code

    def confirmed(self) -> set[Key]:
        return read_confirmed(self.confirmed_log) if self.confirmed_log.exists() else set()


class Traffic:
    """Runs every source until stop() and keeps the ledger."""

    def __init__(
        self,
        procs: Processes,
        api_url: str,
        amqp: AbstractRobustConnection,
        exchange: str,
        seed: int,
        calm: asyncio.Event,
        observed: Observed,
    ) -> None:
        self.procs = procs
        self.api_url = api_url
        self.amqp = amqp
        self.exchange = exchange
        self.rng = random.Random(seed ^ 0x50AC)
        self.ledger = Ledger(random.Random(seed ^ 0xE7E4))
        self.observed = observed
        # Set while no broker node is down: poison is published only then, so that each one's confirm is
        # certain and the dead letters can be counted exactly.
        self.calm = calm
        self.poison_confirmed: list[bytes] = []
        self.poison_uncertain: list[bytes] = []
        logs = procs.deployment.logs
        env = {"MAX_ATTEMPTS": "100", "RECONNECT_INTERVAL": "0.5"}
        self.clis = [
            CliFeeder(procs, "cli-single", ["--envelope-size", "1", "--max-in-flight", "64"], logs, env),
            CliFeeder(procs, "cli-envelopes", ["--envelope-size", "20", "--linger", "0.2"], logs, env),
        ]
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.pending_http: list[list[Event]] = []

    def start(self) -> None:
        for cli in self.clis:
            cli.start()
        self._tasks = [
            asyncio.create_task(self._feed(self.clis[0], RATES["cli-single"], 0.25)),
            asyncio.create_task(self._feed(self.clis[1], RATES["cli-envelopes"], 0.25)),
            asyncio.create_task(self._http("http-single", 1, RATES["http-single"], wait_share=0.0)),
            asyncio.create_task(self._http("http-batch", HTTP_BATCH, RATES["http-batch"], wait_share=1 / 3)),
            asyncio.create_task(self._reader()),
            asyncio.create_task(self._poison()),
        ]

    async def stop(self) -> None:
        """Stop generating; the HTTP clients re-send what is still unconfirmed; the CLIs finish."""
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        for cli in self.clis:
            code = await cli.finish(600)
            if code != 0:
                output = cli.process.output() if cli.process else ""
                log.error("%s exited %d at the end:\n%s", cli.name, code, output)

    def confirmed(self) -> set[Key]:
        keys = set(self.ledger.http_confirmed)
        for cli in self.clis:
            keys |= cli.confirmed()
        return keys

    async def _ticks(self, rate: float, tick: float) -> Any:
        """Yield how many events to send each tick for a steady `rate`, until stopped."""
        owed = 0.0
        next_at = time.monotonic()
        while not self._stopping.is_set():
            owed += rate * tick
            count = int(owed)
            owed -= count
            yield count
            next_at += tick
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = time.monotonic()

    async def _feed(self, cli: CliFeeder, rate: float, tick: float) -> None:
        async for count in self._ticks(rate, tick):
            if count:
                await cli.send(self.ledger.events(cli.name, count))

    async def _http(self, name: str, size: int, rate: float, wait_share: float) -> None:
        async with httpx.AsyncClient(base_url=self.api_url, timeout=30) as client:
            async for count in self._ticks(rate / size, 1.0):
                for _ in range(count):
                    await self._post(client, name, self.ledger.events(name, size), wait_share)
            # The end: whatever was not confirmed is re-sent until it is (the api is up again by now).
            deadline = time.monotonic() + 300
            while self.pending_http and time.monotonic() < deadline:
                batch = self.pending_http.pop(0)
                if not await self._post(client, name, batch, 0.0, retry=True):
                    await asyncio.sleep(0.5)

    async def _post(
        self,
        client: httpx.AsyncClient,
        name: str,
        events: list[Event],
        wait_share: float,
        retry: bool = False,
    ) -> bool:
        if not retry and self.pending_http and self.rng.random() < 0.5:
            # A client re-sends what failed before, along with what it sends now.
            events = events + self.pending_http.pop(0)
        wait = self.rng.random() < wait_share
        try:
            response = await client.post(
                "/publish" + ("?wait=stored" if wait else ""),
                content=wire.encode(events) if len(events) > 1 else wire.encode(events[:1]),
                headers={"content-type": "application/json"},
            )
            status = str(response.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.observed.http_answers[f"{name} {status}"] += 1
        if status in ("200", "202"):
            self.ledger.http_confirmed.update(item.key() for item in events)
            return True
        if status.startswith("4"):
            self.observed.violations.append(f"{name}: POST answered {status}: {response.text[:300]}")
        self.pending_http.append(events)
        return False

    async def _reader(self) -> None:
        async with httpx.AsyncClient(base_url=self.api_url, timeout=30) as client:
            async for _ in self._ticks(1.0, 1.0):
                try:
                    sent_at = time.monotonic()
                    response = await client.get("/stats")
                    response.raise_for_status()
                    self.observed.saw_stats(response.json(), sent_at)
                    url: str | None = "/events?limit=500"
                    if self.rng.random() < 0.3:
                        url = f"/events?limit=200&topic=soak.t{self.rng.randrange(TOPICS)}&order=desc"
                    for _page in range(3):
                        if url is None:
                            break
                        response = await client.get(url)
                        response.raise_for_status()
                        self.observed.pages += 1
                        url = response.links.get("next", {}).get("url")
                    self.observed.reads_ok += 1
                except (httpx.HTTPError, ValueError, KeyError):
                    self.observed.read_errors += 1

    async def _poison(self) -> None:
        number = 0
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.rng.uniform(*POISON_EVERY))
                return
            except TimeoutError:
                pass
            await self.calm.wait()
            number += 1
            # Half not JSON at all, half JSON that breaks the schema; each one unique, to be recognised.
            tag = f"soak-poison-{number}-{uuid.uuid4().hex[:8]}"
            body = (
                f"{{not json {tag}".encode()
                if number % 2
                else json.dumps({"topic": "soak.poison", "event_id": tag, "payload": {}}).encode()
            )
            try:
                channel = await self.amqp.channel(publisher_confirms=True)
                try:
                    exchange = await channel.get_exchange(self.exchange, ensure=False)
                    await exchange.publish(
                        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key="soak.poison",
                        timeout=10,
                    )
                finally:
                    if not channel.is_closed:
                        await channel.close()
                self.poison_confirmed.append(body)
            except Exception as exc:
                # Not confirmed: it may or may not be in the queue; the check allows either for this one.
                log.warning("poison %s not confirmed: %r", tag, exc)
                self.poison_uncertain.append(body)
