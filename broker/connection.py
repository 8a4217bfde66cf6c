"""The broker link every deployable shares: broker errors, the AMQP_URL node list, connect with failover."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiormq
from aio_pika import RobustConnection
from yarl import URL

from contract import frames

log = logging.getLogger(__name__)

# The header `POST /publish?wait=stored` sets on each of its messages (api/stored.py); the consumer records it
# in the batch's transaction with how many of the message's events were new, so the api can answer exactly.
RECEIPT_HEADER = "x-receipt"

# Everything the broker or the way to it can throw at a client that a later attempt, possibly on another node,
# can get past: a refused or lost connection, a channel the broker closed, a nack or a lost confirm, a connect
# or confirm that took too long. Bugs and bad input are not in it, so they are never retried.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,
    # A RuntimeError, not an AMQPError: raised by calls on a channel that has closed meanwhile.
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
    OSError,
)

# The link's state changes are logged once each, at WARNING (unreachable, lost, back), never each attempt: a
# broker that is down for an hour must not write a line every reconnect interval. Only a bounded connect
# (attempts=N) says each failed attempt, with how many remain.


class BrokerUrlError(ValueError):
    """AMQP_URL is not a comma-separated list of amqp:// or amqps:// URLs."""


def parse_urls(value: str) -> tuple[str, ...]:
    """The nodes of AMQP_URL: one URL, or several separated by commas (each with its own credentials).

    Errors show every URL redacted; a comma inside a password must be written %2C.
    """
    urls = tuple(part.strip() for part in value.split(","))
    count = len(urls)
    for position, url in enumerate(urls, 1):
        where = "AMQP_URL" if count == 1 else f"AMQP_URL entry {position} of {count}"
        if not url:
            raise BrokerUrlError(f"{where} is empty; give one URL, or several separated by commas")
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            hint = " (a comma inside a password must be written %2C)" if count > 1 else ""
            raise BrokerUrlError(f"{where} must start with amqp:// or amqps://, got {redact(url)!r}{hint}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            raise BrokerUrlError(f"{where} has no valid host and port: {redact(url)!r}")
    if len(set(urls)) != count:
        raise BrokerUrlError(f"AMQP_URL names the same node twice: {redact_all(urls)}")
    return urls


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages; also safe on a malformed URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    prefix = f"{scheme}://" if sep else ""
    if at and not sep:
        # "ss@host" is what is left of "amqp://user:pa,ss@host" split at the comma: all of it is password.
        return f"***@{hostport}{slash}{tail}"
    if at:
        user = userinfo.split(":", 1)[0]
        masked = f"{user}:***@{hostport}" if ":" in userinfo else authority
        return f"{prefix}{masked}{slash}{tail}"
    _host, colon, port = authority.rpartition(":")
    if colon and not port.isdigit() and not authority.endswith("]"):
        # "amqp://user:pa" is what is left of "amqp://user:pa,ss@host" split at the comma: not a port.
        return f"{prefix}***{slash}{tail}"
    if not sep and colon:
        # No scheme and no @: "x:y" may well be user:password.
        return "***"
    return url


def redact_all(urls: Sequence[str]) -> str:
    return ",".join(redact(url) for url in urls)


def first_choice(urls: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """The nodes in the order to try them: a random first one, so that clients spread over the cluster,
    then the others in their configured order, wrapping around."""
    start = (rng or random).randrange(len(urls))
    return [*urls[start:], *urls[:start]]


class FailoverConnection(RobustConnection):
    """aio-pika's robust connection, except that every reconnect attempt goes to the next node of a list.

    RobustConnection reconnects to the one URL it was given, then restores its channels (their qos,
    exchanges, queues, bindings and consumers) on whatever it reached. Every attempt reads `self.url`, and a
    refused attempt and a lost connection both end in `_on_connection_close` (aio_pika.abc's
    UnderlayConnection.connect calls it on a failed connect too), so moving `url` on there is all it takes;
    channels are then restored on the new node, and a restore that fails there moves on again.
    """

    def __init__(self, url: URL, *, nodes: Sequence[str] = (), name: str = "eventagg", **kwargs: Any) -> None:
        super().__init__(url, client_properties={"connection_name": name}, **kwargs)
        self.nodes: tuple[URL, ...] = tuple(URL(node) for node in nodes) or (self.url,)
        self.name = name
        self._position = self.nodes.index(self.url) if self.url in self.nodes else 0
        self._failures = 0
        self._lost_at: float | None = None

    @property
    def node(self) -> str:
        """The node in use (or tried next), password redacted."""
        return redact(str(self.url))

    async def _on_connected(self) -> None:
        if self._lost_at is not None and len(self.nodes) > 1:
            # Channels are restored (and publishing resumes) only a reconnect interval after the loss: with
            # RabbitMQ 3.10 a channel opened on a surviving node within about 0.2 s of a quorum queue leader's
            # death nacked every publish for its whole life, and the node just lost may have led the queue
            # (tests/test_cluster.py met it in both runs where the api lost the leader's node without this).
            await asyncio.sleep(self._lost_at + self.reconnect_interval - self.loop.time())
        await super()._on_connected()
        # Back after a loss or after failed attempts is a change of state worth a WARNING; a first connect
        # that worked at once is lifecycle.
        recovered = self._lost_at is not None or self._failures > 0
        log.log(
            logging.WARNING if recovered else logging.INFO,
            "connected to the broker node=%s connection=%s%s%s",
            self.node,
            self.name,
            f" nodes={len(self.nodes)}" if len(self.nodes) > 1 else "",
            f" after attempts={self._failures + 1}" if recovered else "",
        )
        self._failures = 0
        self._lost_at = None

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        was_connected = self.connected.is_set()
        await super()._on_connection_close(closing)
        if self.close_called or self.is_closed or self.connection_attempt == 0:
            # Never connected yet: connect() below owns the first attempts and says what failed.
            return
        failed = self.node
        self._position = (self._position + 1) % len(self.nodes)
        self.url = self.nodes[self._position]
        error = _describe(closing)
        if was_connected:
            self._lost_at = self.loop.time()
            log.warning(
                "connection to the broker lost node=%s connection=%s error=%s; reconnecting to node=%s",
                failed,
                self.name,
                error,
                self.node,
            )
            return
        # A failed reconnect after the loss above: the same state, already said (the DEBUG line is for
        # whoever wants each attempt).
        self._failures += 1
        log.debug(
            "broker unreachable node=%s connection=%s attempt=%d error=%s; next node=%s in %.1fs",
            failed,
            self.name,
            self._failures,
            error,
            self.node,
            self.reconnect_interval,
        )


def _describe(closing: asyncio.Future[Any]) -> str:
    if closing.cancelled():
        return "cancelled"
    exc = closing.exception()
    if exc is None:
        return "closed"
    # aiormq puts the URL, password included, into some messages.
    return f"{type(exc).__name__}: {scrub(str(exc))}"


def scrub(text: str) -> str:
    """Error text with any URL in it redacted."""
    return " ".join(redact(word) if "://" in word else word for word in text.split(" "))


async def connect(
    urls: Sequence[str],
    *,
    name: str,
    reconnect_interval: float = 5.0,
    timeout: float | None = None,
    attempts: int | None = None,
    stop: asyncio.Event | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> FailoverConnection | None:
    """A robust connection to one of `urls`, tried in turn from a random one; a round of refusals waits
    `reconnect_interval` before the next.

    `attempts` bounds the first connect (None: until `stop` is set, then None is returned); once connected,
    the connection fails over between the nodes by itself for as long as it lives. Raises the last error
    when the attempts run out; `on_error` hears of every failed attempt.
    """
    frames.install()
    order = first_choice(urls)
    attempt = 0
    while stop is None or not stop.is_set():
        node = order[attempt % len(order)]
        attempt += 1
        connection = FailoverConnection(
            URL(node), nodes=order, name=name, reconnect_interval=reconnect_interval
        )
        connection._failures = attempt - 1  # so that its "connected" line says it recovered
        try:
            await connection.connect(timeout=timeout)
        except BROKER_ERRORS as exc:
            await connection.close()
            if on_error is not None:
                on_error(exc)
            remaining = None if attempts is None else attempts - attempt
            if remaining == 0:
                raise
            # The next node is tried at once; only a whole round of refusals waits out the interval.
            pause = reconnect_interval if attempt % len(order) == 0 else 0.0
            if attempts is None and attempt > 1:
                log.debug(
                    "broker unreachable node=%s connection=%s attempt=%d error=%s",
                    redact(node),
                    name,
                    attempt,
                    f"{type(exc).__name__}: {scrub(str(exc))}",
                )
            elif attempts is None:
                # Unbounded (a service waiting for its broker): said once; the next line is "connected".
                log.warning(
                    "broker unreachable node=%s connection=%s error=%s; retrying every %.1fs%s until one "
                    "answers",
                    redact(node),
                    name,
                    f"{type(exc).__name__}: {scrub(str(exc))}",
                    reconnect_interval,
                    f" over nodes={len(order)}" if len(order) > 1 else "",
                )
            else:
                log.warning(
                    "broker unreachable node=%s connection=%s attempt=%d%s error=%s; next node=%s in %.1fs",
                    redact(node),
                    name,
                    attempt,
                    "" if remaining is None else f" attempts_left={remaining}",
                    f"{type(exc).__name__}: {scrub(str(exc))}",
                    redact(order[attempt % len(order)]),
                    pause,
                )
            if await _sleep_unless(stop, pause):
                break
            continue
        return connection
    return None


async def _sleep_unless(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait `seconds` or until stop is set; True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
