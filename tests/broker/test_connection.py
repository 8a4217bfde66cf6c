"""broker/connection.py and contract/config.py: the AMQP_URL node list, redaction, and failover between
nodes on a real broker."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import Counter

import aio_pika
import pytest
from pydantic import ValidationError
from yarl import URL

from broker import connection as amqp
from broker.connection import FailoverConnection
from contract.config import BrokerUrlError, CommonSettings, parse_urls, redact
from tests.harness.broker import Broker
from tests.harness.processes import free_port
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually


def test_a_single_url_is_a_list_of_one() -> None:
    assert parse_urls("amqp://guest:guest@localhost:5672/") == ("amqp://guest:guest@localhost:5672/",)


def test_several_urls_separated_by_commas_keep_their_own_credentials_and_order() -> None:
    value = "amqp://a:pa@h1:5672/, amqps://b:pb@h2:5671/vh ,amqp://h3"
    assert parse_urls(value) == ("amqp://a:pa@h1:5672/", "amqps://b:pb@h2:5671/vh", "amqp://h3")
    assert CommonSettings(amqp_url=value).safe_amqp_url() == (
        "amqp://a:***@h1:5672/,amqps://b:***@h2:5671/vh,amqp://h3"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "AMQP_URL is empty"),
        ("amqp://u:p@h1/,", "AMQP_URL entry 2 of 2 is empty"),
        ("http://u:secret@h1/", "AMQP_URL must start with amqp:// or amqps://, got 'http://u:***@h1/'"),
        ("amqp://u:p@h1/,h2:5672", "entry 2 of 2 must start with amqp:// or amqps://"),
        ("amqp://u:secret@h1:port/", "has no valid host and port: 'amqp://u:***@h1:port/'"),
        ("amqp://u:p@h1/,amqp://u:p@h1/", "names the same node twice: amqp://u:***@h1/,amqp://u:***@h1/"),
    ],
)
def test_bad_url_lists_are_clear_errors_that_name_the_entry(value: str, message: str) -> None:
    with pytest.raises(BrokerUrlError, match="^.*" + message.replace("*", r"\*").replace("?", r"\?")):
        parse_urls(value)


def test_a_comma_inside_a_password_is_an_error_that_shows_neither_half_of_the_password() -> None:
    with pytest.raises(ValidationError) as caught:
        CommonSettings(amqp_url="amqp://guest:hun,ter2@127.0.0.1:5672/")
    text = str(caught.value)
    assert "AMQP_URL entry 1 of 2" in text
    assert "hun" not in text
    assert "ter2" not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:hunter2@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqp://guest@[::1]:5672/vh", "amqp://guest@[::1]:5672/vh"),
        ("amqps://u:p@w@host/", "amqps://u:***@host/"),
        ("amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5672/"),
        ("amqp://guest:hun", "amqp://***"),
        ("ter2@127.0.0.1:5672/", "***@127.0.0.1:5672/"),
    ],
)
def test_redact_hides_every_password_even_in_a_malformed_url(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_the_first_choice_is_random_so_clients_spread_over_the_nodes_and_the_rest_follow_in_turn() -> None:
    urls = ("amqp://n1", "amqp://n2", "amqp://n3")
    rng = random.Random(5)
    orders = [amqp.first_choice(urls, rng) for _ in range(300)]
    assert {tuple(order) for order in orders} == {
        ("amqp://n1", "amqp://n2", "amqp://n3"),
        ("amqp://n2", "amqp://n3", "amqp://n1"),
        ("amqp://n3", "amqp://n1", "amqp://n2"),
    }
    firsts = Counter(order[0] for order in orders)
    assert min(firsts.values()) > 60, firsts


def dead_url(password: str = "hunter2") -> str:
    return f"amqp://guest:{password}@127.0.0.1:{free_port()}/"


async def test_connect_skips_a_refusing_node_whichever_comes_first(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.connection")
    nodes: Counter[str] = Counter()
    for _ in range(8):
        connection = await amqp.connect([dead_url(), broker.url], name="test-amqp", reconnect_interval=5)
        assert connection is not None
        async with connection:
            nodes[str(connection.url)] += 1
            await connection.channel()
    assert set(nodes) == {broker.url}
    assert "hunter2" not in caplog.text
    assert caplog.text.count("connected to the broker node=") == 8


async def test_bounded_connect_says_how_many_attempts_remain_then_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.connection")
    urls = [dead_url(), dead_url(), dead_url()]
    with pytest.raises(amqp.BROKER_ERRORS):
        async with asyncio.timeout(10):
            await amqp.connect(urls, name="test-amqp", reconnect_interval=30, attempts=3)
    lines = [r.getMessage() for r in caplog.records if "broker unreachable" in r.getMessage()]
    # The next node is tried at once: three refusals cost no reconnect interval.
    assert [line.split("attempts_left=")[1].split()[0] for line in lines] == ["2", "1"]
    assert "hunter2" not in caplog.text


async def test_connect_retries_until_stopped_and_then_gives_none() -> None:
    stop = asyncio.Event()
    failures: list[Exception] = []
    task = asyncio.create_task(
        amqp.connect(
            [dead_url()], name="test-amqp", reconnect_interval=0.05, stop=stop, on_error=failures.append
        )
    )
    await eventually(lambda: len(failures) >= 3, 10, message="three attempts")
    assert not task.done()
    assert all(isinstance(exc, ConnectionError) for exc in failures), failures
    stop.set()
    assert await asyncio.wait_for(task, 5) is None


async def test_a_lost_connection_reconnects_to_the_next_node_and_restores_its_consumer(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.connection")
    target = URL(broker.url)
    proxy = FreezableProxy(target.host or "127.0.0.1", target.port or 5672).start()
    via_proxy = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    queue_name = f"test-amqp-failover-{secrets.token_hex(4)}"
    # Constructed directly rather than by connect(), so that the first node is certainly the proxy.
    connection = FailoverConnection(
        URL(via_proxy), nodes=[via_proxy, broker.url], name="test-amqp", reconnect_interval=0.1
    )
    try:
        await connection.connect(timeout=10)
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        received: list[bytes] = []

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.append(message.body)
            await message.ack()

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"before"), routing_key=queue_name)
        await eventually(lambda: received == [b"before"], 10, message="delivered via the first node")

        proxy.close()  # the node goes away: every connection through it is cut
        await eventually(lambda: str(connection.url) == broker.url and connection.connected.is_set(), 10)
        await channel.ready()
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue_name)
        await eventually(lambda: received == [b"before", b"after"], 10, message="consumer restored")
        ours = [r.getMessage() for r in caplog.records if r.name == "broker.connection"]
        lost = [line for line in ours if "connection to the broker lost" in line]
        assert len(lost) == 1
        assert f"node=amqp://guest:***@127.0.0.1:{proxy.port}/" in lost[0]
        assert f"reconnecting to node=amqp://guest:***@{target.host}:{target.port}/" in lost[0]
        await channel.queue_delete(queue_name)
    finally:
        await connection.close()
