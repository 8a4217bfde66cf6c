"""AMQP frames on the wire: read off the socket for aiormq's connections, buffered, with the per-message
frames decoded by struct rather than by pamqp's generic field walk. (The frames of a publish are written by
broker/confirms.py's `Lane.frames`, next to the delivery tags they carry.)

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

broker/hooks.py's `install_frame_reader()` makes aiormq's connections use it, on the aiormq and pamqp
versions it was verified on; aio-pika's robust connections create theirs through aiormq, reconnects included.
tests/broker/test_wire.py spies on pamqp to hold the code to the list of frames above: pamqp sees every other
frame, and none of those.
"""

from __future__ import annotations

import asyncio
import struct
import time
from datetime import UTC, datetime

import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

READ_SIZE = 1 << 16

# (weight, channel, frame), as aiormq's reader yields them
ReceivedFrame = tuple[int, int, pamqp.frame.FrameTypes]
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


class FrameReader:
    """What aiormq's FrameReceiver is to its connection, reading the socket in chunks: `get_frame()` and
    async iteration yield (weight, channel, frame) as it does."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.started = False
        self._buffer = b""
        self._pos = 0

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> ReceivedFrame:
        # As aiormq's FrameReceiver: a stream already at its end, with nothing left over, ends the iteration
        # (the connection's reader task); an end met while a frame is awaited is a connection error.
        if self._pos == len(self._buffer) and self.reader.at_eof():
            raise StopAsyncIteration
        return await self.get_frame()

    async def get_frame(self) -> ReceivedFrame:
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
            # Never StopAsyncIteration here: get_frame() is also awaited directly (the handshake), where it
            # would escape connect()'s retry as a RuntimeError instead of a broker error.
            left = len(self._buffer) - self._pos
            raise AMQPConnectionError(
                f"Server connection unexpectedly closed. Read {left} bytes of an incomplete frame"
                if left
                else "Server connection unexpectedly closed"
            )
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


# ---- frames out --------------------------------------------------------------------------------------------
# The frames of a publish, built here rather than by pamqp's generic marshalling: pamqp took 17 us per
# message (Basic.Publish, header with properties, body) against 2 us for these struct packs, which give the
# same bytes (tests/broker/test_publisher.py compares them).
_HEADER = struct.Struct(">BHIHHQH")
_PUBLISH = struct.Struct(">HHH").pack(60, 40, 0)  # class basic, method publish, reserved
# content_type, delivery_mode, message_id and timestamp set; persistent (delivery mode 2), JSON. The
# timestamp (whole seconds, the AMQP property's unit) is the consumer's publish-to-commit lag metric.
_PROPERTY_FLAGS = 0x8000 | 0x1000 | 0x0080 | 0x0040
_PROPERTIES = b"\x10application/json\x02"
_FRAME_END_BYTE = b"\xce"


def _short_string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"{text[:40]!r}... is longer than an AMQP short string (255 bytes)")
    return bytes((len(raw),)) + raw


# Routing keys whose publish frame a channel keeps ready; past it the cache starts over.
METHOD_CACHE_SIZE = 10_000


class PublishFrames:
    """The frames of a persistent, mandatory JSON publish on one channel to one exchange.

    Per routing key the method frame is kept whole; per length of message id, one struct packs everything
    from the content header frame to the body frame's header in one call (the properties' constant part, the
    message id, the timestamp and both frames' ends included), so a message that fits one body frame is
    three concatenations: method, that, body and end.
    """

    __slots__ = ("_body_max", "_exchange", "_heads", "_methods", "_number", "_timestamp")

    def __init__(self, number: int, exchange: str, frame_max: int) -> None:
        self._number = number
        self._exchange = _short_string(exchange)
        self._body_max = frame_max - 8
        self._methods: dict[str, bytes] = {}
        self._heads: dict[int, struct.Struct] = {}
        self._timestamp = b""
        self.stamp(time.time())

    def stamp(self, now: float) -> None:
        """The AMQP timestamp of the messages framed from now on: set once per write, not per message."""
        self._timestamp = _TIMESTAMP.pack(int(now))

    def frames(self, routing_key: str, message_id: str, body: bytes) -> bytes:
        number = self._number
        method = self._methods.get(routing_key)
        if method is None:
            if len(self._methods) >= METHOD_CACHE_SIZE:
                self._methods.clear()
            payload = _PUBLISH + self._exchange + _short_string(routing_key) + b"\x01"  # mandatory
            method = _FRAME_HEADER.pack(1, number, len(payload)) + payload + _FRAME_END_BYTE
            self._methods[routing_key] = method
        raw_id = message_id.encode()
        length = len(raw_id)
        size = len(body)
        if 0 < size <= self._body_max and length <= 255:
            head = self._heads.get(length)
            if head is None:
                # Header frame: type, channel, size, class, weight, body size, flags, the constant properties
                # (content type, delivery mode), the message id, the timestamp, the frame end; then the body
                # frame's type, channel and size.
                head = self._heads[length] = struct.Struct(f">BHIHHQH{len(_PROPERTIES)}sB{length}s8sBBHI")
            return (
                method
                + head.pack(
                    2,
                    number,
                    14 + len(_PROPERTIES) + 1 + length + 8,
                    60,
                    0,
                    size,
                    _PROPERTY_FLAGS,
                    _PROPERTIES,
                    length,
                    raw_id,
                    self._timestamp,
                    FRAME_END,
                    3,
                    number,
                    size,
                )
                + body
                + _FRAME_END_BYTE
            )
        properties = _PROPERTIES + _short_string(message_id) + self._timestamp
        header = _HEADER.pack(2, number, 14 + len(properties), 60, 0, size, _PROPERTY_FLAGS)
        content = b"".join(
            _FRAME_HEADER.pack(3, number, len(chunk)) + chunk + _FRAME_END_BYTE
            for chunk in (body[i : i + self._body_max] for i in range(0, size, self._body_max))
        )
        return method + header + properties + _FRAME_END_BYTE + content
