"""The connection to the broker every deployable shares: the one tuple of broker errors, a robust connection
that fails over between the nodes of AMQP_URL, and `connect` with its bounded or endless first attempts."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
from aio_pika import RobustConnection
from yarl import URL

from broker import hooks
from contract.config import redact, scrub

log = logging.getLogger(__name__)

# Everything the broker or the way to it can throw at a client that a later attempt, possibly on another node,
# can get past: a refused or lost connection, a channel the broker closed, a nack or a lost confirm, a connect
# or confirm that took too long. Bad input is not in it, so it is never retried. RuntimeError is: aiormq and
# aio-pika raise a bare one for a call on a connection or channel that closed meanwhile ("... closed",
# "Connection was not opened", "Can't initialize closed channel"; aiormq's ChannelInvalidStateError is one
# too), which opening a channel during a reconnect, or probing queue depths on a closing connection, meets.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,
    RuntimeError,
    ConnectionError,
    TimeoutError,
    OSError,
)

# The link's state changes are logged once each, at WARNING (unreachable, lost, back), never each attempt: a
# broker that is down for an hour must not write a line every reconnect interval. Only a bounded connect
# (attempts=N) says each failed attempt, with how many remain.


def first_choice(urls: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """The nodes in the order to try them: a random first one, so that clients spread over the cluster,
    then the others in their configured order, wrapping around."""
    start = (rng or random).randrange(len(urls))
    return [*urls[start:], *urls[:start]]


class _Failover(RobustConnection):
    """aio-pika's robust connection, except that every reconnect attempt goes to the next node of a list.

    RobustConnection reconnects to the one URL it was given, then restores its channels (their qos,
    exchanges, queues, bindings and consumers) on whatever it reached. Every attempt reads `self.url`, and a
    refused attempt and a lost connection both end in a close (aio_pika.abc's UnderlayConnection.connect
    closes on a failed connect too), so moving `url` on there is all it takes; channels are then restored on
    the new node, and a restore that fails there moves on again. How the close and the connect are seen is
    the subclass's: FailoverConnection through broker/hooks.py, PlainFailoverConnection through aio-pika's
    public callbacks.
    """

    def __init__(self, url: URL, *, nodes: Sequence[str] = (), name: str = "eventagg", **kwargs: Any) -> None:
        super().__init__(url, client_properties={"connection_name": name}, **kwargs)
        self.nodes: tuple[URL, ...] = tuple(URL(node) for node in nodes) or (self.url,)
        self.name = name
        self._position = self.nodes.index(self.url) if self.url in self.nodes else 0
        self._failures = 0
        self._up = False
        self._lost_at: float | None = None

    @property
    def node(self) -> str:
        """The node in use (or tried next), password redacted."""
        return redact(str(self.url))

    async def before_restore(self) -> None:
        if self._lost_at is not None and len(self.nodes) > 1:
            # Channels are restored (and publishing resumes) only a reconnect interval after the loss: with
            # RabbitMQ 3.10 a channel opened on a surviving node within about 0.2 s of a quorum queue leader's
            # death nacked every publish for its whole life, and the node just lost may have led the queue
            # (tests/test_cluster.py met it in both runs where the api lost the leader's node without this).
            await asyncio.sleep(self._lost_at + self.reconnect_interval - self.loop.time())

    def after_connected(self) -> None:
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
        self._up = True

    def after_close(self, error: BaseException | None, was_connected: bool) -> None:
        self._up = False
        if self.close_called or self.is_closed or self.connection_attempt == 0:
            # Never connected yet: connect() below owns the first attempts and says what failed.
            return
        failed = self.node
        self._position = (self._position + 1) % len(self.nodes)
        self.url = self.nodes[self._position]
        described = _describe(error)
        if was_connected:
            self._lost_at = self.loop.time()
            log.warning(
                "connection to the broker lost node=%s connection=%s error=%s; reconnecting to node=%s",
                failed,
                self.name,
                described,
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
            described,
            self.node,
            self.reconnect_interval,
        )


class FailoverConnection(_Failover, hooks.FailoverHooks):
    """The fail-over connection on a verified aio-pika: closes and connects are seen in aio-pika's own
    methods (broker/hooks.py), and channels are restored a reconnect interval after a loss."""


class PlainFailoverConnection(_Failover):
    """The fail-over connection on aio-pika's public callbacks alone, for a version nobody verified: the node
    moves on the same way, but channels are restored as soon as a node answers (no public hook runs before
    aio-pika restores them), and a restore that fails may move on by two nodes rather than one."""

    def __init__(self, url: URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.close_callbacks.add(self._seen_close)
        self.reconnect_callbacks.add(self._seen_reconnect)

    async def connect(self, timeout: float | None = None) -> None:
        await super().connect(timeout)
        self.after_connected()

    def _seen_close(self, _: object, error: BaseException | None) -> None:
        # aio-pika clears `connected` before its close callbacks, except when a restore failed (it calls them
        # first itself), so the flag this connection keeps stands in for it.
        self.after_close(error, self._up or self.connected.is_set())

    def _seen_reconnect(self, _: object) -> None:
        self.after_connected()


def _describe(error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if error is None:
        return "closed"
    # aiormq puts the URL, password included, into some messages.
    return f"{type(error).__name__}: {scrub(str(error))}"


async def connect(
    urls: Sequence[str],
    *,
    name: str,
    reconnect_interval: float = 5.0,
    timeout: float | None = None,
    attempts: int | None = None,
    stop: asyncio.Event | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> FailoverConnection | PlainFailoverConnection | None:
    """A robust connection to one of `urls`, tried in turn from a random one; a round of refusals waits
    `reconnect_interval` before the next.

    `attempts` bounds the first connect (None: until `stop` is set, then None is returned); once connected,
    the connection fails over between the nodes by itself for as long as it lives. Raises the last error
    when the attempts run out; `on_error` hears of every failed attempt.
    """
    hooks.install_frame_reader()
    connection_class = FailoverConnection if hooks.aio_pika_hooks() else PlainFailoverConnection
    order = first_choice(urls)
    attempt = 0
    while stop is None or not stop.is_set():
        node = order[attempt % len(order)]
        attempt += 1
        connection = connection_class(
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
