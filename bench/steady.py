"""`python -m bench.steady`: publish a steady stream at a fixed rate for a fixed time, with re-sends.

The retention scenario's load (bench/retention.py). Events are made one at a time from their index, so a
stream of any length costs no memory up front, and a re-send repeats an earlier event verbatim (its id,
timestamp and payload come from its index): a `--duplicates` share of the positions, spread evenly, re-send
an event picked at random among all sent before, most of them long expired under a short RETENTION. Paced as
bench/latency.py paces its stream: every millisecond it catches up with the schedule. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from hashlib import blake2b

from broker.publisher import DEFAULT_LINGER, ConfirmingPublisher, PublishOptions
from contract.event import Event
from contract.topology import Topology
from publisher.load import topic_names

_START = datetime(2026, 1, 1, tzinfo=UTC)
_LEVELS = ("debug", "info", "info", "info", "warning", "error")


def make_event(index: int, seed: int, topics: list[str]) -> Event:
    """The `index`-th original event of the stream `seed`: the same arguments give the same event."""
    digest = blake2b(f"{seed}:{index}".encode(), digest_size=16).digest()
    stamp = (_START + timedelta(milliseconds=index)).isoformat().replace("+00:00", "Z")
    return Event(
        topic=topics[digest[0] % len(topics)],
        event_id=str(uuid.UUID(bytes=digest, version=4)),
        timestamp=stamp,
        source=f"steady-{digest[1] % 4}",
        payload={
            "seq": index,
            "level": _LEVELS[digest[2] % len(_LEVELS)],
            "message": f"steady event {index}",
            "latency_ms": int.from_bytes(digest[3:5], "big") % 2000,
        },
    )


def is_resend(position: int, share: float) -> bool:
    """Whether the stream's `position`-th event re-sends an earlier one: `share` of them, evenly spread."""
    return position > 0 and math.floor((position + 1) * share) > math.floor(position * share)


async def run(args: argparse.Namespace, url: str, topology: Topology) -> dict[str, object]:
    total = int(args.rate * args.seconds)
    topics = topic_names(args.topics, args.topic_prefix)
    rng = random.Random(args.seed)
    options = PublishOptions(envelope_size=args.envelope_size, linger=args.linger)
    unique = resent = 0
    behind = 0.0  # the most the stream fell behind its schedule, in seconds
    async with ConfirmingPublisher.connect(url, topology, options) as publisher:
        batch = publisher.batch()
        first_publish_at = time.time()
        started = time.perf_counter()
        sent = 0
        while sent < total:
            elapsed = time.perf_counter() - started
            due = min(total, int(elapsed * args.rate) + 1)
            behind = max(behind, elapsed - sent / args.rate)
            while sent < due:
                if is_resend(sent, args.duplicates) and unique:
                    await batch.add(make_event(rng.randrange(unique), args.seed, topics))
                    resent += 1
                else:
                    await batch.add(make_event(unique, args.seed, topics))
                    unique += 1
                sent += 1
            await asyncio.sleep(0.001)
        publish_seconds = time.perf_counter() - started
        await batch.flush()
        last_confirm_at = time.time()
    return {
        "events": total,
        "unique": unique,
        "duplicates": resent,
        "first_publish_at": first_publish_at,
        "last_confirm_at": last_confirm_at,
        "achieved_rate": total / publish_seconds,
        "most_behind_seconds": behind,
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.steady", description=__doc__)
    p.add_argument("--rate", type=float, default=1000.0, help="events per second")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--duplicates", type=float, default=0.2, help="share of re-sent events")
    p.add_argument("--envelope-size", type=int, default=100)
    p.add_argument("--linger", type=float, default=DEFAULT_LINGER)
    p.add_argument("--topics", type=int, default=8)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--topic-prefix", default="steady")
    args = p.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or not 0 <= args.duplicates < 1:
        p.error("need --rate > 0, --seconds > 0 and 0 <= --duplicates < 1")
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
    topology = Topology.named(os.environ["AMQP_EXCHANGE"], os.environ["AMQP_QUEUE"])
    print(json.dumps(asyncio.run(run(args, url, topology))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
