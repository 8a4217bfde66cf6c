"""The buffered frame reader: every kind of frame decodes to what pamqp decodes it to, whatever the chunking
of the socket's bytes, and broken or cut streams fail as aiormq's own reader fails."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from broker import wire as broker_wire
from broker.wire import FrameReader


def properties(**values: Any) -> spec.Basic.Properties:
    return spec.Basic.Properties(**values)


FRAMES: list[tuple[int, Any]] = [
    (1, spec.Basic.Deliver("ctag1.0123456789abcdef", 1, False, "eventagg", "orders.created")),
    (7, spec.Basic.Deliver("c", 2**62 + 5, True, "", "ünïcode.topic")),
    (1, ContentHeader(0, 180, properties(content_type="application/json", delivery_mode=2, message_id="e1"))),
    (1, ContentHeader(0, 0, properties())),
    (
        2,
        ContentHeader(
            0,
            10,
            properties(
                content_type="text/plain",
                content_encoding="gzip",
                delivery_mode=1,
                priority=9,
                correlation_id="corr",
                reply_to="amq.rabbitmq.reply-to",
                expiration="60000",
                message_id="m" * 255,
                timestamp=datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC),
                message_type="event",
                user_id="guest",
                app_id="publisher",
            ),
        ),
    ),
    # A headers table goes to pamqp, as does anything this reader does not decode itself.
    (1, ContentHeader(0, 5, properties(headers={"x-receipt": "r1", "n": 3}, message_id="e2"))),
    (1, ContentBody(b'{"topic":"orders.created"}')),
    (1, ContentBody(b"\xce" * 3000)),
    (1, spec.Basic.Ack(42, False)),
    (1, spec.Basic.Ack(2**40, True)),
    (1, spec.Basic.Nack(7, True, False)),
    (1, spec.Basic.Return(312, "NO_ROUTE", "eventagg", "nowhere")),
    (1, spec.Basic.CancelOk("ctag")),
    (1, spec.Channel.Close(406, "PRECONDITION_FAILED - unknown delivery tag 9", 60, 80)),
    (0, spec.Connection.Close(320, "CONNECTION_FORCED", 0, 0)),
    (0, Heartbeat()),
]


def wire(frames: list[tuple[int, Any]]) -> bytes:
    return b"".join(pamqp.frame.marshal(frame, channel) for channel, frame in frames)


def described(frame: Any) -> tuple[type, dict[str, Any]]:
    """A frame's class and fields, properties included, for comparing two decodings."""
    fields = {name: getattr(frame, name) for name in getattr(frame, "__slots__", ())}
    fields.update(vars(frame) if hasattr(frame, "__dict__") else {})
    if isinstance(frame, ContentHeader):
        fields["properties"] = described(frame.properties)
    return type(frame), fields


def stream(data: bytes, cuts: list[int]) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    start = 0
    for cut in [*cuts, len(data)]:
        reader.feed_data(data[start:cut])
        start = cut
    reader.feed_eof()
    return reader


async def read_all(reader: asyncio.StreamReader) -> list[tuple[int, int, Any]]:
    return [item async for item in FrameReader(reader)]


@pytest.mark.parametrize("seed", range(12))
async def test_every_frame_decodes_as_pamqp_decodes_it_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    frames = [rng.choice(FRAMES) for _ in range(200)]
    data = wire(frames)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 60)))
    got = await read_all(stream(data, cuts))
    expected = []
    at = 0
    while at < len(data):
        weight, channel, frame = pamqp.frame.unmarshal(data[at:])
        expected.append((weight, channel, described(frame)))
        at += weight
    assert [(weight, channel, described(frame)) for weight, channel, frame in got] == expected
    assert [channel for _, channel, _ in got] == [channel for channel, _ in frames]


async def test_a_frame_bigger_than_one_read_is_assembled() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: several reads
    got = await read_all(stream(wire([(3, ContentBody(body))]), [100, 70_000, 200_000]))
    assert [(weight, channel, frame.value) for weight, channel, frame in got] == [(len(body) + 8, 3, body)]


async def test_a_stream_cut_inside_a_frame_is_a_connection_error() -> None:
    data = wire(FRAMES[:3])
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await read_all(stream(data[:-5], []))


async def test_a_wrong_frame_end_byte_is_an_invalid_frame() -> None:
    data = bytearray(wire(FRAMES[:1]))
    data[-1] = 0x00
    with pytest.raises(InvalidFrameError, match="frame end"):
        await read_all(stream(bytes(data), []))


async def test_a_truncated_deliver_is_rejected_with_pamqps_error() -> None:
    frame = bytearray(wire([(1, spec.Basic.Deliver("ctag", 1, False, "x", "rk"))]))
    # Claim a longer consumer tag than the frame holds: both readers must refuse it.
    frame[7 + 4] = 200
    with pytest.raises(InvalidFrameError):
        await read_all(stream(bytes(frame), []))


async def test_a_header_whose_flags_promise_more_than_it_holds_is_rejected() -> None:
    data = bytearray(wire([(1, ContentHeader(0, 1, properties(message_id="abc")))]))
    data[7 + 12 : 7 + 14] = (0x0080 | 0x0040).to_bytes(2, "big")  # a timestamp announced, not sent
    with pytest.raises(InvalidFrameError):
        await read_all(stream(bytes(data), []))


async def test_a_protocol_header_from_the_server_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolSyntaxError):
        await read_all(stream(b"AMQP\x00\x00\x09\x01", []))


async def test_an_empty_stream_ends_the_frames() -> None:
    assert await read_all(stream(b"", [])) == []


def handed_over(frame: Any) -> bool:
    """Whether the fast path leaves `frame` to pamqp, as broker/wire.py says: everything but Basic.Deliver,
    Basic.Ack, body frames, and content headers of class basic without a headers table or cluster id."""
    if isinstance(frame, spec.Basic.Deliver | spec.Basic.Ack | ContentBody):
        return False
    if isinstance(frame, ContentHeader):
        # pamqp writes class 60 (basic) for a header built without a class id, as these are.
        basic = frame.class_id in (None, 60)
        return not basic or frame.properties.headers is not None or bool(frame.properties.cluster_id)
    return True


@pytest.mark.parametrize("seed", range(4))
async def test_pamqp_decodes_exactly_the_frames_the_fast_path_hands_over(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pamqp is the fallback for any frame the struct decoder cannot read; a broken struct decoder would still
    # give pamqp's results, so the comparison above cannot tell. pamqp's own decoder is watched instead.
    seen: list[tuple[type, dict[str, Any]]] = []
    unmarshal = pamqp.frame.unmarshal

    def spy(data: bytes) -> Any:
        decoded = unmarshal(data)
        seen.append(described(decoded[2]))
        return decoded

    monkeypatch.setattr(pamqp.frame, "unmarshal", spy)
    rng = random.Random(seed)
    frames = [rng.choice(FRAMES) for _ in range(200)]
    data = wire(frames)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 60)))

    got = await read_all(stream(data, cuts))

    assert len(got) == len(frames)
    assert seen == [
        described(unmarshal(wire([(channel, frame)]))[2]) for channel, frame in frames if handed_over(frame)
    ]
    assert len(seen) < len(frames)  # the draw always holds some per-message frames


async def test_a_fast_frame_that_only_pamqp_can_read_is_caught_by_the_spy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the test above guards against: a struct decoder that fails quietly on a Basic.Deliver hands it to
    # pamqp, which decodes it correctly, and only the spy notices.
    seen: list[str] = []
    unmarshal = pamqp.frame.unmarshal

    def spy(data: bytes) -> Any:
        decoded = unmarshal(data)
        seen.append(type(decoded[2]).__name__)
        return decoded

    def broken(buffer: bytes, at: int) -> spec.Basic.Deliver:
        raise IndexError("a decoder that broke")

    monkeypatch.setattr(pamqp.frame, "unmarshal", spy)
    monkeypatch.setattr(broker_wire, "_deliver", broken)
    deliver = spec.Basic.Deliver("ctag", 1, False, "x", "rk")

    got = await read_all(stream(wire([(1, deliver)]), []))

    assert [described(frame) for _, _, frame in got] == [described(deliver)]
    assert seen == ["Deliver"]
    assert handed_over(deliver) is False
