"""`python -m bench.bare`: the ceiling's consumer. It only acks: no parsing, no storage.

It consumes the run's queue through aio-pika's own consumer API (an IncomingMessage and a task per delivery)
and acks with one multiple-ack for whatever arrived since the last one, or, with `--ack-every N`, once N
deliveries are unacked (and for the last ones), so the only difference from the real consumer is the work it
skips. When it has acked `--expect` messages it prints one JSON line (wall-clock times) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from contract.topology import Topology, declare

DEFAULT_PREFETCH = 512  # the consumer's default before it was sized by measurement
# The reference consumer of the consume-path targets: a plain aio-pika consumer tuned the usual way.
REFERENCE_PREFETCH = 1000
REFERENCE_ACK_EVERY = 500


async def consume(
    url: str, topology: Topology, expect: int, prefetch: int, ack_every: int = 1
) -> dict[str, float | int]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await declare(channel, topology)
        arrived = asyncio.Event()
        state: dict[str, float | int] = {"messages": 0, "last_tag": 0, "first_at": 0.0}
        last: list[AbstractIncomingMessage] = []

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not state["messages"]:
                state["first_at"] = time.time()
                last.append(message)
            state["messages"] = int(state["messages"]) + 1
            state["last_tag"] = message.delivery_tag or 0
            arrived.set()

        await declared.queue.consume(on_message, no_ack=False)
        print(json.dumps({"consuming_at": time.time()}), flush=True)
        acked = 0
        while acked < expect:
            await arrived.wait()
            arrived.clear()
            tag, count = int(state["last_tag"]), int(state["messages"])
            if count - acked >= ack_every or (count >= expect and count > acked):
                # The aiormq channel's multiple-ack, as the product settles a batch.
                await last[0].channel.basic_ack(tag, multiple=True)
                acked = count
        return {"done_at": time.time(), "first_at": state["first_at"], "messages": acked}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    p.add_argument("--expect", type=int, required=True, help="messages to ack before exiting")
    p.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    p.add_argument(
        "--ack-every", type=int, default=1, help="multiple-ack once this many are unacked (default: at once)"
    )
    args = p.parse_args()
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
    topology = Topology.named(os.environ["AMQP_EXCHANGE"], os.environ["AMQP_QUEUE"])
    result = asyncio.run(consume(url, topology, args.expect, args.prefetch, args.ack_every))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
