"""Reading AMQP frames off the socket for aiormq's connections: buffered, with the per-message frames decoded
by struct rather than by pamqp's generic field walk.

aiormq reads every frame with three `readexactly` calls under an asyncio lock into a BytesIO, then lets pamqp
decode it field by field. Every delivery is three frames (Basic.Deliver, content header, body) and every
publish confirm one (Basic.Ack), so that is the consume path's largest cost: py-spy on the consumer draining
50,000 queued single-event messages put aiormq's frame reading at 24 % of the event loop thread's samples,
half of it pamqp's decoding (17 us for a Basic.Deliver, 14 us for its content header, 4 us for its body,
against 2-3 us each here). `FrameReader` reads the socket in chunks and cuts every complete frame out of
one buffer; Basic.Deliver, Basic.Ack, content headers whose properties are plain values and body frames are
decoded here, and every other frame, or any frame the fast path cannot read, goes to pamqp as before, so
what pamqp would reject is rejected with pamqp's own error. The decoded objects are pamqp's own classes
with the same field values (tests/contract/test_frames.py compares the two on every kind of frame).

`install()` makes aiormq's connections use it; aio-pika's robust connections create theirs through
aiormq, reconnects included.
"""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

READ_SIZE = 1 << 16
FRAME_END = 0xCE

_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
_METHOD_ID = struct.Struct(">HH")  # class id, method id
_TAG_AND_FLAG = struct.Struct(">qB")  # delivery tag (signed, as pamqp reads it), one octet of bit fields
_CONTENT_HEADER = struct.Struct(">HHQH")  # class id, weight, body size, first property flags word
_TIMESTAMP = struct.Struct(">Q")

# Content header property flags (AMQP 0-9-1, class basic), in the order the values follow the flags.
_CONTENT_TYPE = 0x8000
_CONTENT_ENCODING = 0x4000
_HEADERS = 0x2000
_DELIVERY_MODE = 0x1000
_PRIORITY = 0x0800
_CORRELATION_ID = 0x0400
_REPLY_TO = 0x0200
_EXPIRATION = 0x0100
_MESSAGE_ID = 0x0080
_TIMESTAMP_FLAG = 0x0040
_TYPE = 0x0020
_USER_ID = 0x0010
_APP_ID = 0x0008
# Decoded here: everything but the headers table and the (deprecated, always empty) cluster id. A header
# with either, or with a second flags word, goes to pamqp.
_FAST_PROPERTIES = 0xFFFF & ~(_HEADERS | 0x0004 | 0x0001)
_SHORT_STRINGS = (
    (_CONTENT_TYPE, "content_type"),
    (_CONTENT_ENCODING, "content_encoding"),
)
_TAIL_STRINGS = (
    (_CORRELATION_ID, "correlation_id"),
    (_REPLY_TO, "reply_to"),
    (_EXPIRATION, "expiration"),
    (_MESSAGE_ID, "message_id"),
)
_LAST_STRINGS = (
    (_TYPE, "message_type"),
    (_USER_ID, "user_id"),
    (_APP_ID, "app_id"),
)


class FrameReader(aiormq.connection.FrameReceiver):
    """aiormq's FrameReceiver, reading the socket in chunks: yields (weight, channel, frame) as it does."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._buffer = b""
        self._pos = 0

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        while True:
            buffer, pos = self._buffer, self._pos
            if len(buffer) - pos >= 7:
                if not self.started:
                    if buffer.startswith(b"AMQP", pos):
                        raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                    self.started = True
                kind, channel, size = _FRAME_HEADER.unpack_from(buffer, pos)
                end = pos + 7 + size
                if len(buffer) > end:
                    if buffer[end] != FRAME_END:
                        raise InvalidFrameError(f"frame end byte {buffer[end]:#x}, not 0xce")
                    self._pos = end + 1
                    return size + 8, channel, _decode(kind, buffer, pos, end)
            await self._fill()

    async def _fill(self) -> None:
        """Read at least one more byte into the buffer, dropping what was already cut out of it."""
        try:
            chunk = await self.reader.read(READ_SIZE)
        except ConnectionRefusedError as e:
            raise AMQPConnectionError(f"Server connection refused: {e!r}") from e
        except ConnectionResetError as e:
            raise AMQPConnectionError(f"Server connection reset: {e!r}") from e
        except ConnectionError as e:
            raise AMQPConnectionError(f"Server connection error: {e!r}") from e
        except OSError as e:
            raise AMQPConnectionError(f"Server communication error: {e!r}") from e
        if not chunk:
            left = len(self._buffer) - self._pos
            if left:
                raise AMQPConnectionError(
                    f"Server connection unexpectedly closed. Read {left} bytes of an incomplete frame"
                )
            raise StopAsyncIteration
        self._buffer = self._buffer[self._pos :] + chunk if self._pos < len(self._buffer) else chunk
        self._pos = 0


def _decode(kind: int, buffer: bytes, start: int, end: int) -> pamqp.frame.FrameTypes:
    payload = start + 7
    try:
        if kind == 3:
            return ContentBody(buffer[payload:end])
        if kind == 1:
            method = _METHOD_ID.unpack_from(buffer, payload)
            if method == (60, 60):
                return _deliver(buffer, payload + 4)
            if method == (60, 80):
                tag, bits = _TAG_AND_FLAG.unpack_from(buffer, payload + 4)
                if payload + 13 == end:
                    return Basic.Ack(tag, bool(bits & 1))
        elif kind == 2:
            header = _content_header(buffer, payload, end)
            if header is not None:
                return header
    except (struct.error, ValueError, IndexError):
        pass  # pamqp reads it again below and raises its own, precise error
    try:
        return pamqp.frame.unmarshal(buffer[start : end + 1])[2]
    except PAMQPException as e:
        raise InvalidFrameError(str(e)) from e


def _short(buffer: bytes, at: int) -> tuple[str, int]:
    length = buffer[at]
    at += 1
    return buffer[at : at + length].decode(), at + length


def _deliver(buffer: bytes, at: int) -> Basic.Deliver:
    consumer_tag, at = _short(buffer, at)
    tag, bits = _TAG_AND_FLAG.unpack_from(buffer, at)
    exchange, at = _short(buffer, at + 9)
    routing_key, _ = _short(buffer, at)
    # Set as pamqp's unmarshal sets them, without the constructor's validation of the exchange name (a regular
    # expression per delivery, a third of the cost of building the frame), which pamqp's reading skips too.
    frame = Basic.Deliver.__new__(Basic.Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = tag
    frame.redelivered = bool(bits & 1)
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def _content_header(buffer: bytes, at: int, end: int) -> ContentHeader | None:
    class_id, weight, body_size, flags = _CONTENT_HEADER.unpack_from(buffer, at)
    if flags & ~_FAST_PROPERTIES or class_id != 60:
        return None
    at += 14
    values: dict[str, object] = {}
    for flag, name in _SHORT_STRINGS:
        if flags & flag:
            values[name], at = _short(buffer, at)
    if flags & _DELIVERY_MODE:
        values["delivery_mode"] = buffer[at]
        at += 1
    if flags & _PRIORITY:
        values["priority"] = buffer[at]
        at += 1
    for flag, name in _TAIL_STRINGS:
        if flags & flag:
            values[name], at = _short(buffer, at)
    if flags & _TIMESTAMP_FLAG:
        (stamp,) = _TIMESTAMP.unpack_from(buffer, at)
        at += 8
        # As pamqp reads it: anything past the year 2106 in seconds is taken for milliseconds.
        values["timestamp"] = datetime.fromtimestamp(stamp / 1000.0 if stamp > 0xFFFFFFFF else stamp, tz=UTC)
    for flag, name in _LAST_STRINGS:
        if flags & flag:
            values[name], at = _short(buffer, at)
    if at != end:
        return None  # not what the flags announced: let pamqp say what is wrong
    header = ContentHeader(weight, body_size, Basic.Properties(**values))  # type: ignore[arg-type]
    header.class_id = class_id
    return header


def install() -> None:
    """Make every aiormq connection opened from now on read its frames with FrameReader."""
    aiormq.connection.FrameReceiver = FrameReader  # type: ignore[misc]
