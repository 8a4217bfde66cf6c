"""Every private name of aiormq and aio-pika the broker package touches, and the check that decides on them.

The one place to read before upgrading aiormq, aio-pika or pamqp. Each hook below says what it replaces,
why (the measurement), which versions it was verified on, and which canary test fails when an upgrade
switches it off (tests/broker/test_hooks.py). At start-up `contract.versions.hooks_allowed` compares the
versions in use with the ranges here; on one that nobody verified, every hook of that library stays off,
the product runs on the library's public API (the plain path: the same messages, acks and confirms, at a
lower rate), and one WARNING names the library and its version. pyproject.toml declares the same ranges.

- frame reader (aiormq 7.2.4, pamqp 4.0.1): `aiormq.connection.FrameReceiver`, rebound module-wide; pamqp's
  frame classes built without their constructors (broker/wire.py).
- deliveries in the channel's reader (aiormq 7.2.4): `Channel._on_deliver_frame`, replaced per channel;
  `Channel._Channel__get_content_header`, `Channel._Channel__get_content_frame`, `Channel.consumers`.
- confirms in the connection's reader (aiormq 7.2.4): `Channel._on_confirm_frame` and
  `Channel._on_return_frame`, replaced per channel; `Channel.frames`, wrapped; `Channel._get_frame`,
  `Channel._read_content`, `Channel.write_queue`.
- restore after a fail-over (aio-pika 10.2.1): `RobustConnection._on_connected` and
  `RobustConnection._on_connection_close`, overridden.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiormq
import aiormq.connection
from aio_pika import RobustConnection
from aiormq.abc import ChannelFrame, ConfirmationFrameType, DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from broker import wire
from contract.versions import Verified, hooks_allowed

if TYPE_CHECKING:
    from broker.confirms import Lane

log = logging.getLogger(__name__)

AIORMQ = Verified("aiormq", "7.2.4", "7.3")
PAMQP = Verified("pamqp", "4.0.1", "4.1")
AIO_PIKA = Verified("aio-pika", "10.2.1", "10.3")
LIBRARIES = (AIORMQ, PAMQP, AIO_PIKA)

_AIORMQ_HOOKS = "its frame reader, deliveries and confirms taken in the readers"
_PAMQP_HOOKS = "the struct frame decoder"
_AIO_PIKA_HOOKS = "the pause before channels are restored after a fail-over"

_AIORMQ_FRAME_RECEIVER = aiormq.connection.FrameReceiver


def aiormq_hooks() -> bool:
    """Whether the aiormq hooks are on in this process (decided at the first call)."""
    return hooks_allowed(AIORMQ, _AIORMQ_HOOKS)


def aio_pika_hooks() -> bool:
    return hooks_allowed(AIO_PIKA, _AIO_PIKA_HOOKS)


# ---- the frame reader (aiormq 7.2.4, pamqp 4.0.1) ----------------------------------------------------------
# aiormq reads each frame with three awaited reads under a lock, then pamqp decodes it field by field: 24 % of
# the consumer's event loop draining 50,000 single-event messages (broker/wire.py has the figures).
# Canary (tests/broker/test_hooks.py): test_the_frame_reader_decodes_a_real_connections_frames.


def install_frame_reader() -> bool:
    """aiormq connections opened from now on read their frames with wire.FrameReader, or with aiormq's own
    reader on an unverified aiormq or pamqp. True when the fast reader is in."""
    aiormq_verified = aiormq_hooks()
    pamqp_verified = hooks_allowed(PAMQP, _PAMQP_HOOKS)  # checked (and said) whatever aiormq's answer
    fast = aiormq_verified and pamqp_verified
    receiver: Any = wire.FrameReader if fast else _AIORMQ_FRAME_RECEIVER
    aiormq.connection.FrameReceiver = receiver  # type: ignore[misc]
    return fast


# ---- deliveries handed over in the channel's reader (aiormq 7.2.4) -----------------------------------------
# aiormq runs every consumer callback in a task of its own (FutureStore.create_task, a done callback, one more
# loop turn per delivery): 7 % of the consumer's samples draining 50,000 queued single-event messages.
# Canary: test_deliveries_reach_the_inbox_in_the_channel_reader_without_a_task.


def take_deliveries(channel: aiormq.Channel, deliver: Callable[[DeliveredMessage], None]) -> bool:
    """Have `channel` hand each delivery to `deliver` in its reader, without a task per delivery; False (and
    aiormq dispatches as usual, to the callback given to basic_consume) on an unverified aiormq.

    The channel must carry one consumer only, so that every Basic.Deliver on it is that consumer's. The
    content is read with aiormq's own readers, in the same order, so frames are consumed exactly as aiormq
    would; a body that came in one frame (every event message: frames are 128 KiB) is taken as it is.
    """
    if not aiormq_hooks():
        return False
    read_header = channel._Channel__get_content_header  # type: ignore[attr-defined]
    read_body = channel._Channel__get_content_frame  # type: ignore[attr-defined]

    async def on_deliver_frame(frame: spec.Basic.Deliver) -> None:
        header: ContentHeader = await read_header()
        size = header.body_size
        body = b""
        if size:
            body = (await read_body()).value
            if len(body) < size:
                parts = [body]
                while size > sum(map(len, parts)):
                    parts.append((await read_body()).value)
                body = b"".join(parts)
        if frame.consumer_tag in channel.consumers:  # as aiormq: nothing for a consumer already cancelled
            deliver(DeliveredMessage(delivery=frame, header=header, body=body, channel=channel))

    channel._on_deliver_frame = on_deliver_frame  # type: ignore[method-assign]
    return True


# ---- confirms settled in the connection's reader (aiormq 7.2.4) --------------------------------------------
# The publisher keeps its own delivery tag -> message map (broker/confirms.py) and writes many messages per
# ChannelFrame on the connection's write queue; aiormq would look for a future per message.
# Canary: test_confirms_settle_in_the_connection_reader.


def take_confirms(channel: aiormq.Channel, lane: Lane) -> asyncio.Queue[ChannelFrame] | None:
    """Send `channel`'s confirms and returns to `lane`, confirms inline where the order allows; returns the
    connection's write queue for the lane's frames. None on an unverified aiormq: the publisher then sends
    each message with `basic_publish` and settles it by the confirmation that returns."""
    if not aiormq_hooks():
        return None

    async def on_confirm_frame(frame: ConfirmationFrameType) -> None:
        lane.confirmed(frame)

    async def on_return_frame(frame: spec.Basic.Return) -> None:
        lane.returning = True
        try:
            # The content follows on the channel's frame queue, as aiormq's own return handler reads it.
            header = await channel._get_frame()
            if not isinstance(header, ContentHeader):
                raise aiormq.exceptions.InvalidFrameError(header)
            delivered = await channel._read_content(frame, header)
            lane.returned(delivered.header.properties.message_id, delivered.body)
        finally:
            lane.returning = False

    channel._on_confirm_frame = on_confirm_frame  # type: ignore[method-assign]
    channel._on_return_frame = on_return_frame  # type: ignore[method-assign]
    channel.frames = _ConfirmsInline(channel.frames, lane)  # type: ignore[assignment]
    queue: asyncio.Queue[ChannelFrame] = channel.write_queue
    return queue


class _ConfirmsInline:
    """Stands in for an aiormq channel's frame queue, which aiormq's connection reader fills and the channel's
    reader task empties: a confirm with nothing queued before it is settled by the connection reader itself.

    aiormq hands every frame of a channel to that channel's reader task, so a confirm cost a task switch
    before it settled and another before the waiting request ran: measured with time stamps in the api on
    `python -m bench --only pika_roundtrip,shim_sequential`, 16 us of the 30 us from the confirm's arrival to
    the request resuming. Frames keep their order: a confirm behind queued frames, or while a return's
    content is still being read (the broker sends a return before the confirm of its message), is queued.
    """

    __slots__ = ("_lane", "_queue")

    def __init__(self, queue: asyncio.Queue[tuple[int, Any]], lane: Lane) -> None:
        self._queue = queue
        self._lane = lane

    async def put(self, item: tuple[int, Any]) -> None:
        frame, lane, queue = item[1], self._lane, self._queue
        if type(frame) in _CONFIRMS and queue.empty() and not lane.returning and lane.alive:
            try:
                lane.confirmed(frame)
            except Exception as exc:
                # Raised in the channel's reader it would have closed the channel; here it must not end the
                # connection's reader. The publisher re-sends what the closed channel held.
                log.exception("settling a confirm failed; closing the channel channel=%d", lane.number)
                if lane.channel is not None:
                    closing = asyncio.get_running_loop().create_task(lane.channel.close(exc))
                    _CLOSING.add(closing)
                    closing.add_done_callback(_CLOSING.discard)
            return
        await queue.put(item)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


_CONFIRMS = (spec.Basic.Ack, spec.Basic.Nack)
_CLOSING: set[asyncio.Task[Any]] = set()


# ---- restore after a fail-over (aio-pika 10.2.1) -----------------------------------------------------------
# RobustConnection reconnects and restores its channels in `_on_connected`; a refused attempt and a lost
# connection both end in `_on_connection_close` (aio_pika.abc's UnderlayConnection.connect calls it on a
# failed connect too). Canary: test_a_connection_sees_its_connect_through_aio_pikas_own_method; the fail-over
# itself: tests/broker/test_connection.py and tests/test_cluster.py.


class FailoverHooks(RobustConnection):
    """The two aio-pika methods broker.connection.FailoverConnection needs to see, passed on as public ones:
    `before_restore` (awaited before the channels are restored), `after_connected` and `after_close`."""

    async def _on_connected(self) -> None:
        await self.before_restore()
        await super()._on_connected()
        self.after_connected()

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Set from the moment aiormq connected, before channels are restored: a restore that failed is a loss.
        was_connected = self.connected.is_set()
        await super()._on_connection_close(closing)
        error = asyncio.CancelledError() if closing.cancelled() else closing.exception()
        self.after_close(error, was_connected)

    async def before_restore(self) -> None:
        raise NotImplementedError

    def after_connected(self) -> None:
        raise NotImplementedError

    def after_close(self, error: BaseException | None, was_connected: bool) -> None:
        raise NotImplementedError
