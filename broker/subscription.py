"""The consumer's subscription: basic.consume on the aiormq channel under aio-pika's robust channel, handing
each delivery to an inbox (consumer/batcher.py's Inbox.put_nowait) as it arrives.

aio-pika stays the connection and topology layer (robust reconnect, qos and declarations restored on every
reopen); only the delivery path goes one level down. aio-pika's `Queue.consume` wraps every delivery in an
`IncomingMessage` and runs the callback in a task of its own: py-spy on the consumer draining 50,000
single-event messages put that at about a sixth of the event loop's samples (IncomingMessage.__init__ 12 %,
aio-pika's create_task 4 %), more than decoding the events. Here a delivery is aiormq's own
`DeliveredMessage`, appended to the inbox as it is. aio-pika does not know about this consumer, so it is
registered again on the new aiormq channel after every reopen (a reconnect, or a channel the broker closed).

aiormq itself still runs every consumer callback in a task of its own (FutureStore.create_task, a done
callback, one more loop turn per delivery). The channel's reader awaits `_on_deliver_frame` for each
Basic.Deliver, so on a verified aiormq the subscription has broker/hooks.py's `take_deliveries` replace that
method on its own channel object with one that reads the content the same way and hands the message over
synchronously; on any other aiormq, aiormq's own dispatch calls `_on_delivery`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiormq
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import AbstractChannel, DeliveredMessage

from broker import hooks
from broker.connection import BROKER_ERRORS

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY = 1.0


class Subscription:
    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        deliver: Callable[[DeliveredMessage], None],
        on_change: Callable[[str | None], None] | None = None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._deliver = deliver
        # Told None once consuming, and why not each time the channel it consumes on closes.
        self._on_change = on_change
        self._underlay: AbstractChannel | None = None
        self._tag: str | None = None
        self._cancelled = False
        self._retry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._channel.reopen_callbacks.add(self._on_reopen)
        await self._subscribe()

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        # Reached when aiormq dispatches a delivery itself, in a task of its own: on the plain path (an aiormq
        # nobody verified broker/hooks.py's take_deliveries on). The same hand-over.
        self._deliver(message)

    async def _subscribe(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        if isinstance(underlay, aiormq.Channel):
            hooks.take_deliveries(underlay, self._deliver)
        ok = await underlay.basic_consume(self._queue, self._on_delivery, no_ack=False)
        self._underlay, self._tag = underlay, ok.consumer_tag
        if self._on_change is not None:
            underlay.closing.add_done_callback(self._closed)
            self._on_change(None)
        log.debug("subscribed queue=%s channel=%s consumer_tag=%s", self._queue, underlay.number, self._tag)

    async def _on_reopen(self, _: object) -> None:
        if self._cancelled:
            return
        try:
            await self._subscribe()
        except BROKER_ERRORS as exc:
            # The channel or the connection failed again; aio-pika reopens it and calls this once more.
            log.warning("could not consume after the channel reopened error=%r; waiting for the next", exc)
        else:
            log.info("consuming again after the channel reopened queue=%s", self._queue)

    def _closed(self, closing: asyncio.Future[object]) -> None:
        if self._cancelled or self._on_change is None:
            return
        error = None if closing.cancelled() else closing.exception()
        self._on_change(f"the channel closed ({type(error).__name__ if error else 'closed'}: {error or ''})")

    def _on_broker_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        # The broker cancels a consumer when its queue goes away (deleted, or its node lost). Subscribing
        # again fails while the queue is missing, which closes the channel; aio-pika then reopens it and
        # declares the queue again, and _on_reopen subscribes on the new channel.
        if self._cancelled or frame.consumer_tag != self._tag:
            return
        log.warning("the broker cancelled the consumer queue=%s; subscribing again", self._queue)
        if self._on_change is not None:
            self._on_change("the broker cancelled the consumer (its queue moved or went away)")
        self._retry = asyncio.ensure_future(self._resubscribe())

    async def _resubscribe(self) -> None:
        await asyncio.sleep(RESUBSCRIBE_DELAY)
        await self._on_reopen(None)

    async def cancel(self) -> None:
        """Stop taking deliveries: what was delivered before basic.cancel-ok is in the inbox afterwards."""
        self._cancelled = True
        self._channel.reopen_callbacks.discard(self._on_reopen)
        if self._retry is not None:
            self._retry.cancel()
        underlay, tag = self._underlay, self._tag
        if underlay is None or tag is None or underlay.is_closed:
            return  # a closed channel delivers nothing more, and the broker requeued what it held
        # The channel's reader hands each delivery to the inbox before it reads the next frame, so every
        # delivery the broker sent before its cancel-ok is in the inbox when this returns.
        await underlay.basic_cancel(tag)
        await asyncio.sleep(0)  # and, should aiormq have dispatched one itself, its task has run
