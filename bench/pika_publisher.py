"""`python -m bench.pika_publisher`: the plain-client references for publishing, written with pika.

Two modes, both publishing the same generated load as the publisher CLI (`publisher.load`, same seed, 20%
re-sent) as single-event messages with the product's properties (persistent, mandatory, JSON, message id =
event id) to the run's exchange (AMQP_URL, AMQP_EXCHANGE from the environment; the caller declares the
topology first):

* pipelined (default): a `SelectConnection` with publisher confirms keeping `--in-flight` messages
  unconfirmed at a time, settling by delivery tag (a `multiple` ack settles every tag up to it). It prints
  one JSON line with the wall-clock times of the first publish and of the last confirm, like the CLI.
* `--round-trip`: a `BlockingConnection` that publishes one message and waits for its confirm before the
  next; it prints the nearest-rank p50 and p99 of those round trips in milliseconds.

Bodies are serialised before the clock starts. A returned or nacked message fails the run (exit 1): a
reference that lost messages would not be one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import pika

from contract import event as wire
from publisher import load

DUPLICATES = 0.2
TOPICS = 8
WARMUP = 20


def messages(count: int, seed: int) -> list[tuple[str, bytes, Any]]:
    """(routing key, body, properties) of each message, in sending order."""
    events = load.generate(count, DUPLICATES, TOPICS, seed).events
    return [
        (
            item.topic,
            wire.encode([item]),
            pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=item.event_id),
        )
        for item in events
    ]


class Pipelined:
    """Publishes everything with at most `in_flight` unconfirmed, on pika's own I/O loop."""

    def __init__(self, url: str, exchange: str, items: list[tuple[str, bytes, Any]], in_flight: int) -> None:
        self.exchange = exchange
        self.items = items
        self.in_flight = in_flight
        self.next = 0
        self.unconfirmed: set[int] = set()
        self.tag = 0
        self.confirmed = 0
        self.failures: list[str] = []
        self.first_publish_at = 0.0
        self.last_confirm_at = 0.0
        self.channel: Any = None
        self.connection = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
        )

    def run(self) -> dict[str, Any]:
        self.connection.ioloop.start()
        return {
            "first_publish_at": self.first_publish_at,
            "last_confirm_at": self.last_confirm_at,
            "messages": self.confirmed,
            "errors": self.failures,
        }

    def _on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, _connection: Any, error: Any) -> None:
        self.failures.append(f"connection failed: {error}")
        self.connection.ioloop.stop()

    def _on_closed(self, _connection: Any, _reason: Any) -> None:
        self.connection.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_return_callback(self._on_return)
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_select_ok)

    def _on_select_ok(self, _frame: Any) -> None:
        self.first_publish_at = time.time()
        self._fill()

    def _fill(self) -> None:
        while self.next < len(self.items) and len(self.unconfirmed) < self.in_flight:
            routing_key, body, properties = self.items[self.next]
            self.next += 1
            self.channel.basic_publish(self.exchange, routing_key, body, properties, mandatory=True)
            self.tag += 1
            self.unconfirmed.add(self.tag)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self.failures.append(f"nack up to tag {method.delivery_tag}")
        if method.multiple:
            settled = {tag for tag in self.unconfirmed if tag <= method.delivery_tag}
            self.unconfirmed -= settled
            self.confirmed += len(settled)
        elif method.delivery_tag in self.unconfirmed:
            self.unconfirmed.discard(method.delivery_tag)
            self.confirmed += 1
        if self.failures or (self.next == len(self.items) and not self.unconfirmed):
            self.last_confirm_at = time.time()
            self.connection.close()
        else:
            self._fill()

    def _on_return(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        self.failures.append(f"returned: {method.reply_code} {method.reply_text} {method.routing_key}")

    def _on_channel_closed(self, _channel: Any, reason: Any) -> None:
        if self.next < len(self.items) or self.unconfirmed:
            self.failures.append(f"channel closed: {reason}")
        if not self.connection.is_closed and not self.connection.is_closing:
            self.connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def round_trips(url: str, exchange: str, items: list[tuple[str, bytes, Any]]) -> dict[str, Any]:
    """Publish and wait for the confirm, one message at a time; the first WARMUP are not counted."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        timings: list[float] = []
        for index, (routing_key, body, properties) in enumerate(items):
            started = time.perf_counter()
            # With confirms on, BlockingChannel.basic_publish returns once the broker confirmed; it raises
            # UnroutableError on a return and NackError on a nack.
            channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
            if index >= WARMUP:
                timings.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    return {
        "p50_ms": percentile(timings, 50),
        "p99_ms": percentile(timings, 99),
        "messages": len(items),
        "errors": [],
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pika_publisher", description=__doc__)
    p.add_argument("--count", type=int, required=True, help="messages to publish")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--in-flight", type=int, default=256, help="unconfirmed messages at a time (pipelined)")
    p.add_argument("--round-trip", action="store_true", help="one message at a time, p50/p99 round trip")
    args = p.parse_args()
    if args.count < 1 or args.in_flight < 1 or (args.round_trip and args.count <= WARMUP):
        print(f"need --count >= 1 (> {WARMUP} with --round-trip) and --in-flight >= 1", file=sys.stderr)
        return 2
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
    exchange = os.environ["AMQP_EXCHANGE"]
    items = messages(args.count, args.seed)
    try:
        if args.round_trip:
            result = round_trips(url, exchange, items)
        else:
            result = Pipelined(url, exchange, items, args.in_flight).run()
    except pika.exceptions.AMQPError as exc:
        print(f"pika publisher failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
