"""How the CLI's events reach the broker: AMQP with confirms, or the api's HTTP publish shim."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx

from broker.publisher import ConfirmingPublisher, OnConfirmed, PublishFailed
from contract import event as wire
from contract.event import AnyEvent
from publisher.settings import PublisherSettings

log = logging.getLogger(__name__)

HTTP_EVENTS_PER_REQUEST = 1000
HTTP_CONCURRENCY = 4


class Batch(Protocol):
    @property
    def confirmed(self) -> int: ...

    @property
    def written(self) -> int:
        """Events written towards the broker (or the api) so far, confirmed or not."""
        ...

    async def add(self, item: AnyEvent) -> None: ...

    async def flush(self) -> None: ...


class Transport(Protocol):
    def batch(self, on_confirmed: OnConfirmed | None = None) -> Batch: ...


@asynccontextmanager
async def open_transport(via: str, settings: PublisherSettings) -> AsyncIterator[Transport]:
    if via == "amqp":
        async with ConfirmingPublisher.connect(
            settings.amqp_url,
            settings.topology(),
            settings.publish_options(),
            reconnect_interval=settings.reconnect_interval,
        ) as publisher:
            yield publisher
    elif via == "http":
        async with httpx.AsyncClient(
            base_url=settings.api_url, timeout=settings.confirm_timeout + 30
        ) as client:
            yield HttpTransport(client, settings)
    else:
        raise ValueError(f"unknown transport {via!r}; use amqp or http")


class HttpTransport:
    def __init__(self, client: httpx.AsyncClient, settings: PublisherSettings) -> None:
        self._client = client
        self._settings = settings
        self.slots = asyncio.Semaphore(HTTP_CONCURRENCY)
        # With wait_stored, the api's account of each request: events it stored, already stored, pending.
        self.stored = {"new": 0, "duplicates": 0, "pending": 0}

    def batch(self, on_confirmed: OnConfirmed | None = None) -> HttpBatch:
        return HttpBatch(self, on_confirmed)

    async def post(self, events: list[AnyEvent]) -> None:
        """POST one request, re-sent on 503 or a lost connection; the consumer deduplicates re-sends."""
        body = wire.encode_array(events)
        headers = {"content-type": "application/json"}
        if self._settings.api_key:
            headers["x-api-key"] = self._settings.api_key
        attempts = self._settings.max_attempts
        params = {"wait": "stored"} if self._settings.wait_stored else None
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post("/publish", content=body, headers=headers, params=params)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200 and params is None:
                    return
                if response.status_code in (200, 202) and params is not None:
                    # 202: confirmed by the broker, not stored within the api's PUBLISH_TIMEOUT.
                    answer = response.json()
                    for key in self.stored:
                        self.stored[key] += int(answer.get(key) or 0)
                    return
                reason = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code != 503:
                    raise PublishFailed(events, reason)
            if attempt == attempts:
                raise PublishFailed(events, reason)
            log.warning(
                "publish request failed, re-sending reason=%s attempts_left=%d", reason, attempts - attempt
            )
            await asyncio.sleep(0.2 * 2 ** (attempt - 1))


class InFlight:
    """Requests running as tasks, bounded by a shared semaphore; tallies what was confirmed and what failed.

    A task per request is fine here: a request carries up to HTTP_EVENTS_PER_REQUEST events."""

    def __init__(self, slots: asyncio.Semaphore, on_confirmed: OnConfirmed | None = None) -> None:
        self._slots = slots
        self._on_confirmed = on_confirmed
        self._tasks: set[asyncio.Task[None]] = set()
        self.confirmed = 0
        self.written = 0  # events of the requests started
        self.failed: list[AnyEvent] = []
        self.reasons: list[str] = []

    async def start(self, events: list[AnyEvent], send: Callable[[list[AnyEvent]], Awaitable[None]]) -> None:
        # Acquire before creating the task: this is the back-pressure that bounds unconfirmed sends.
        await self._slots.acquire()
        self.written += len(events)
        self.spawn(self._deliver(events, send))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Wait for every send; raise PublishFailed naming every event that was not confirmed."""
        try:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        except BaseException:
            # Cancelled (a caller's deadline): stop re-sending in the background; what was not confirmed
            # is the caller's to re-send.
            for task in self._tasks:
                task.cancel()
            raise
        if self.failed:
            raise PublishFailed(self.failed, "; ".join(sorted(set(self.reasons))))

    async def _deliver(
        self, events: list[AnyEvent], send: Callable[[list[AnyEvent]], Awaitable[None]]
    ) -> None:
        try:
            await send(events)
        except PublishFailed as exc:
            log.error("giving up on events=%d reason=%s", len(events), exc.reason)
            self.failed.extend(events)
            self.reasons.append(exc.reason)
        else:
            self.confirmed += len(events)
            if self._on_confirmed is not None:
                self._on_confirmed(events)
        finally:
            self._slots.release()


class HttpBatch:
    """Events in requests of HTTP_EVENTS_PER_REQUEST, a few requests in flight at once."""

    def __init__(self, transport: HttpTransport, on_confirmed: OnConfirmed | None) -> None:
        self._transport = transport
        self._in_flight = InFlight(transport.slots, on_confirmed)
        self._buffer: list[AnyEvent] = []

    @property
    def confirmed(self) -> int:
        return self._in_flight.confirmed

    @property
    def written(self) -> int:
        return self._in_flight.written

    async def add(self, item: AnyEvent) -> None:
        self._buffer.append(item)
        if len(self._buffer) >= HTTP_EVENTS_PER_REQUEST:
            await self._send()

    async def flush(self) -> None:
        await self._send()
        await self._in_flight.wait()

    async def _send(self) -> None:
        events, self._buffer = self._buffer, []
        if events:
            await self._in_flight.start(events, self._transport.post)
