"""The consumer's way from a connection to a subscription survives losing the connection on the way.

Found by the soak (tests/soak/): a node killed or the network cut while the consumer was declaring its
queue made the consumer exit with the error, where it should wait for the reconnect and subscribe again.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.harness.broker import Broker
from tests.harness.pipeline import counters, start_pipeline
from tests.harness.processes import Processes
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually

# An AMQP method frame's class and method ids: Queue.Declare (50, 10).
QUEUE_DECLARE = b"\x00\x32\x00\x0a"


@pytest.fixture
def proxy(broker: Broker) -> Iterator[FreezableProxy]:
    parts = urlsplit(broker.url)
    started = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    yield started
    started.close()


async def test_a_connection_lost_while_declaring_the_queue_is_reconnected_and_consumed_from(
    procs: Processes, amqp: AbstractRobustConnection, broker: Broker, proxy: FreezableProxy
) -> None:
    parts = urlsplit(broker.url)
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    # The api declares the topology first, directly; the consumer's own declare is cut through the proxy.
    proxy.cut_when_sent(QUEUE_DECLARE)
    consumer, _ = await start_pipeline(
        procs, amqp, consumer_env={"AMQP_URL": via_proxy, "RECONNECT_INTERVAL": "0.2"}
    )
    assert consumer is not None
    assert consumer.alive, consumer.output()
    assert "subscribing failed" in consumer.output(), "the connection was not cut while declaring"
    summary = procs.publish("--count", "200", "--duplicates", "0", "--seed", "21")
    assert summary["exit_code"] == 0, summary
    await eventually(
        lambda: counters(procs.deployment)["unique_processed"] == 200, 60, message="200 events stored"
    )
    assert consumer.alive
    assert consumer.terminate() == 0
