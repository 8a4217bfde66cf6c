"""`python -m bench.latency`: publish at a steady rate and time publish -> queryable for sampled events.

Publishes through the product's confirming publisher (`broker.publisher`) at `--rate` events per second
for `--seconds`. For every `--sample-every`-th event it notes the moment the event is handed to the publisher,
then polls `GET /events/{topic}/{event_id}` every `--poll` seconds until it answers 200; the difference is the
event's publish-to-queryable latency (resolution: the poll interval plus one request). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from urllib.parse import quote

import httpx

from broker.publisher import ConfirmingPublisher, PublishOptions
from contract.event import Event
from contract.topology import Topology
from publisher import load


async def probe(
    client: httpx.AsyncClient, item: Event, sent: float, sent_wall: float, poll: float, deadline: float
) -> tuple[float, float]:
    """Seconds until GET finds the event, and until the consumer stamped it (`received_at`, taken when the
    batch's transaction starts): the second splits the first into "reach the store" and "commit and read"."""
    path = f"/events/{item.topic}/{quote(item.event_id, safe='')}"
    while True:
        response = await client.get(path)
        now = time.perf_counter()
        if response.status_code == 200:
            stamped = datetime.fromisoformat(response.json()["received_at"]).timestamp()
            return now - sent, stamped - sent_wall
        if response.status_code != 404:
            raise RuntimeError(f"GET {path}: HTTP {response.status_code}")
        if now > deadline:
            raise TimeoutError(f"{path} not queryable after {now - sent:.1f}s")
        await asyncio.sleep(poll)


Pending = asyncio.Queue[tuple[Event, float, float] | None]


async def prober(
    client: httpx.AsyncClient,
    pending: Pending,
    poll: float,
    timeout: float,
    latencies: list[float],
    stamped: list[float],
    failures: list[str],
) -> None:
    """Probes sampled events oldest first, one request at a time, so probing adds a bounded load.

    Events become queryable roughly in publish order, so the next sample is usually found on its first
    request; a measured latency can only be late (an upper bound), never early.
    """
    while (item := await pending.get()) is not None:
        event, sent, sent_wall = item
        try:
            latency, to_stamp = await probe(client, event, sent, sent_wall, poll, sent + timeout)
        except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        else:
            latencies.append(latency)
            stamped.append(to_stamp)


async def run(args: argparse.Namespace, url: str, topology: Topology) -> dict[str, object]:
    total = int(args.rate * args.seconds)
    events = load.generate(total, 0.0, 8, args.seed, args.topic_prefix).events
    options = PublishOptions(envelope_size=args.envelope_size, linger=args.linger)
    pending: Pending = asyncio.Queue()
    latencies: list[float] = []
    stamped: list[float] = []
    failures: list[str] = []
    async with (
        httpx.AsyncClient(base_url=args.api_url, timeout=10.0) as client,
        ConfirmingPublisher.connect(url, topology, options) as publisher,
    ):
        probing = asyncio.create_task(
            prober(client, pending, args.poll, args.probe_timeout, latencies, stamped, failures)
        )
        batch = publisher.batch()
        started = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * args.rate) + 1)
            while sent < due:
                item = events[sent]
                now = time.perf_counter()
                await batch.add(item)
                if sent % args.sample_every == 0:
                    pending.put_nowait((item, now, time.time()))
                sent += 1
            await asyncio.sleep(0.001)
        publish_seconds = time.perf_counter() - started
        await batch.flush()
        pending.put_nowait(None)
        await asyncio.wait_for(probing, args.probe_timeout + 10)
    return {
        "events": total,
        "achieved_rate": total / publish_seconds,
        "latencies": latencies,
        "to_stamp": stamped,
        "failures": failures[:5],
        "failed": len(failures),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    p.add_argument("--api-url", required=True)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--sample-every", type=int, default=20)
    p.add_argument("--poll", type=float, default=0.002, help="seconds between requests for one event")
    p.add_argument("--probe-timeout", type=float, default=30.0)
    p.add_argument("--envelope-size", type=int, default=1)
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--topic-prefix", default="latency")
    args = p.parse_args()
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
    topology = Topology.named(os.environ["AMQP_EXCHANGE"], os.environ["AMQP_QUEUE"])
    result = asyncio.run(run(args, url, topology))
    print(json.dumps(result), flush=True)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
