"""The confirming publisher: delivery-tag settlement, the frames it writes, and on a real broker multiple
confirms, nacks, a return among many messages in flight, and a connection cut with hundreds in flight."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pamqp.frame
import pytest
from aio_pika.abc import AbstractRobustConnection
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from broker.confirms import Lane, Message, PublishFailed, Settler, Tally, Unroutable
from broker.hooks import _ConfirmsInline
from broker.publisher import ConfirmingPublisher, PublishOptions, envelopes
from contract.event import Event
from contract.topology import Topology, declare_exchange
from tests.harness.broker import Broker
from tests.harness.proxy import FreezableProxy
from tests.harness.waiting import eventually

STAMP = 1_764_633_600  # 2025-12-02T00:00:00Z


def event(index: int, topic: str = "orders.created") -> Event:
    return Event(
        topic=topic,
        event_id=f"e{index}",
        timestamp="2026-11-22T10:15:00Z",
        source="test",
        payload={"n": index},
    )


class Recorder(Settler):
    def __init__(self) -> None:
        self.settlements: list[tuple[str, bool]] = []
        self.frames = 0

    def settled(self, lane: Lane, message: Message, ack: bool) -> None:
        self.settlements.append((message.events[0].event_id, ack))

    def after_confirm(self, lane: Lane) -> None:
        self.frames += 1


def lane_with(count: int, recorder: Recorder, frame_max: int = 131_072) -> Lane:
    lane = Lane(recorder, 1, "x.events", frame_max)
    tally = Tally()
    for index in range(1, count + 1):
        lane.frames(Message([event(index)], tally))
    return lane


async def test_single_and_multiple_acks_and_nacks_settle_exactly_the_tags_they_cover() -> None:
    recorder = Recorder()
    lane = lane_with(10, recorder)
    assert lane.tag == 10

    lane.confirmed(spec.Basic.Ack(delivery_tag=3, multiple=True))
    lane.confirmed(spec.Basic.Ack(delivery_tag=5))
    lane.confirmed(spec.Basic.Nack(delivery_tag=4))
    lane.confirmed(spec.Basic.Nack(delivery_tag=8, multiple=True))
    lane.confirmed(spec.Basic.Ack(delivery_tag=8))  # already settled: nothing
    lane.confirmed(spec.Basic.Ack(delivery_tag=10, multiple=True))

    assert recorder.settlements == [
        ("e1", True),
        ("e2", True),
        ("e3", True),
        ("e5", True),
        ("e4", False),
        ("e6", False),
        ("e7", False),
        ("e8", False),
        ("e9", True),
        ("e10", True),
    ]
    assert lane.unsettled == {}
    assert lane.nacks == 2
    assert recorder.frames == 6


async def test_a_confirm_is_settled_where_it_arrives_only_when_no_frame_of_its_channel_is_waiting() -> None:
    recorder = Recorder()
    lane = lane_with(4, recorder)
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    inline = _ConfirmsInline(queue, lane)

    await inline.put((0, spec.Basic.Ack(delivery_tag=1)))
    assert (recorder.settlements, queue.qsize()) == ([("e1", True)], 0)

    # A return is still being read (its content follows): the confirm of its message must wait behind it.
    lane.returning = True
    await inline.put((0, spec.Basic.Ack(delivery_tag=2)))
    lane.returning = False
    # Something of the channel is queued: what follows it is queued too, in order.
    await inline.put((0, spec.Basic.Ack(delivery_tag=3)))
    assert (len(recorder.settlements), queue.qsize()) == (1, 2)

    queue.get_nowait()
    queue.get_nowait()
    await inline.put((0, spec.Basic.Nack(delivery_tag=4)))
    assert recorder.settlements[-1] == ("e4", False)


async def test_a_multiple_confirm_below_the_lowest_unsettled_tag_settles_nothing() -> None:
    recorder = Recorder()
    lane = lane_with(4, recorder)
    lane.confirmed(spec.Basic.Ack(delivery_tag=2, multiple=True))
    lane.confirmed(spec.Basic.Ack(delivery_tag=1, multiple=True))
    lane.confirmed(spec.Basic.Nack(delivery_tag=2, multiple=True))
    assert recorder.settlements == [("e1", True), ("e2", True)]
    assert sorted(lane.unsettled) == [3, 4]


async def test_a_lane_that_gave_up_its_messages_settles_nothing_more() -> None:
    recorder = Recorder()
    lane = lane_with(3, recorder)
    taken = lane.take_unsettled()
    lane.confirmed(spec.Basic.Ack(delivery_tag=3, multiple=True))
    assert [m.events[0].event_id for m in taken] == ["e1", "e2", "e3"]
    assert recorder.settlements == []


def test_a_return_marks_the_oldest_unsettled_message_with_that_id_and_body() -> None:
    lane = lane_with(0, Recorder())
    tally = Tally()
    first, second, other = Message([event(1)], tally), Message([event(1)], tally), Message([event(2)], tally)
    for message in (first, other, second):
        lane.frames(message)
    lane.returned("e1", first.body)
    assert (first.returned, second.returned, other.returned) == (True, False, False)
    lane.returned("e1", first.body)
    assert second.returned


def pamqp_frames(message: Message, channel: int, exchange: str, frame_max: int) -> bytes:
    properties = spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id=message.message_id,
        timestamp=datetime.fromtimestamp(STAMP, UTC),
    )
    out = pamqp.frame.marshal(
        spec.Basic.Publish(exchange=exchange, routing_key=message.routing_key, mandatory=True), channel
    )
    out += pamqp.frame.marshal(ContentHeader(0, len(message.body), properties), channel)
    step = frame_max - 8
    for start in range(0, len(message.body), step):
        out += pamqp.frame.marshal(ContentBody(message.body[start : start + step]), channel)
    return out


@pytest.mark.parametrize("size", [1, 100])
def test_the_frames_written_are_the_ones_pamqp_would_marshal(size: int) -> None:
    big = Event(
        topic="orders.created", event_id="big", timestamp="2026-11-22T10:15:00Z", source="t",
        payload={"text": "x" * 10_000},
    )  # fmt: skip
    for frame_max in (4096, 131_072):
        lane = Lane(Recorder(), 7, "some.exchange", frame_max)
        lane.stamp(STAMP + 0.75)  # the AMQP timestamp is whole seconds
        for events in ([event(1)], [event(i) for i in range(size)], [big]):
            message = Message(events, Tally())
            assert lane.frames(message) == pamqp_frames(message, 7, "some.exchange", frame_max)


@pytest.mark.parametrize("message_id", ["e", "0" * 32, "a" * 200, "x" * 255, "ü" * 127])
def test_the_frames_of_any_message_id_and_body_size_are_the_ones_pamqp_would_marshal(message_id: str) -> None:
    frame_max = 4096
    lane = Lane(Recorder(), 3, "x.events", frame_max)
    lane.stamp(STAMP)
    for size in (1, 100, frame_max - 9, frame_max - 8, frame_max - 7, 3 * frame_max):
        message = Message([event(1)], Tally())
        message.message_id, message.body = message_id, b"b" * size
        assert lane.frames(message) == pamqp_frames(message, 3, "x.events", frame_max)


def test_an_envelope_gets_a_message_id_of_its_own_and_a_lone_event_its_event_id() -> None:
    tally = Tally()
    envelopes_ids = {Message([event(1), event(2)], tally).message_id for _ in range(1000)}
    assert len(envelopes_ids) == 1000
    assert all(len(mid) == 32 and int(mid, 16) >= 0 for mid in envelopes_ids)
    assert Message([event(7)], tally).message_id == "e7"
    long_id = event(1).model_copy(update={"event_id": "é" * 200})
    assert len(Message([long_id], tally).message_id) == 32  # 400 bytes: no AMQP short string


async def test_a_tally_names_what_failed_and_says_unroutable_only_when_every_failure_was_returned() -> None:
    tally = Tally()
    returned, nacked = Message([event(1)], tally), Message([event(2)], tally)
    tally.pending = 2
    tally.fail(returned, "unroutable", returned=True)
    tally.fail(nacked, "nacked")
    with pytest.raises(PublishFailed) as caught:
        await tally.wait()
    assert type(caught.value) is PublishFailed
    assert [e.event_id for e in caught.value.unconfirmed] == ["e1", "e2"]

    only = Tally()
    only.pending = 1
    only.fail(Message([event(3)], only), "unroutable", returned=True)
    with pytest.raises(Unroutable):
        await only.wait()


def test_envelopes_group_by_topic_in_order_of_first_appearance_up_to_the_size() -> None:
    events = [event(1, "a"), event(2, "b"), event(3, "a"), event(4, "a"), event(5, "b")]
    grouped = envelopes(events, 2)
    assert [[e.event_id for e in group] for group in grouped] == [["e1", "e3"], ["e4"], ["e2", "e5"]]


# ---- on a real broker ------------------------------------------------------------------------------------


@pytest.fixture
async def connection(broker: Broker) -> AsyncIterator[AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(broker.url)
    async with conn:
        yield conn


@pytest.fixture
async def topology(broker: Broker) -> AsyncIterator[Topology]:
    name = f"pub{secrets.token_hex(5)}"
    made = Topology.named(f"{name}.events", f"{name}.aggregator")
    yield made
    conn = await aio_pika.connect(broker.url)
    async with conn:
        channel = await conn.channel()
        for queue in (made.queue, made.dead_letter_queue, f"{made.queue}.bounded"):
            await channel.queue_delete(queue)
        for exchange in (made.exchange, made.dead_letter_exchange):
            await channel.exchange_delete(exchange)


def spy_on_confirms(publisher: ConfirmingPublisher) -> list[Any]:
    """Every confirm frame the publisher's current channel receives, in order."""
    seen: list[Any] = []
    lane = publisher._lane
    assert lane is not None and lane.channel is not None

    settle = lane.confirmed

    # Every confirm goes through `Lane.confirmed`, whether the connection's reader settled it inline or the
    # channel's reader task did.
    def spy(frame: Any) -> None:
        seen.append(frame)
        settle(frame)

    lane.confirmed = spy  # type: ignore[method-assign]
    return seen


async def drain(connection: AbstractRobustConnection, queue: str) -> list[str]:
    """The event ids of every message in `queue`, taken off it."""
    channel = await connection.channel()
    ids = []
    declared = await channel.declare_queue(queue, passive=True)
    while (message := await declared.get(no_ack=True, fail=False)) is not None:
        ids.append(str(message.message_id))
    await channel.close()
    return ids


async def test_a_burst_is_confirmed_once_per_message_with_multiple_acks_settling_ranges(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    events = [event(i) for i in range(2000)]
    confirmed: Counter[str] = Counter()
    options = PublishOptions(envelope_size=1, linger=0)
    async with ConfirmingPublisher.open(connection, topology, options) as publisher:
        frames = spy_on_confirms(publisher)
        batch = publisher.batch(lambda done: confirmed.update(e.event_id for e in done))
        for item in events:
            await batch.add(item)
        await batch.flush()

    assert confirmed == Counter(e.event_id for e in events)
    assert batch.confirmed == 2000
    assert any(frame.multiple for frame in frames), "no multiple ack in 2,000 pipelined publishes"
    assert len(frames) < 2000
    assert sorted(await drain(connection, topology.queue)) == sorted(e.event_id for e in events)


async def test_with_a_linger_of_0_an_envelope_goes_at_the_end_of_its_loop_turn_not_when_it_is_full(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    options = PublishOptions(envelope_size=100, linger=0)
    async with ConfirmingPublisher.open(connection, topology, options) as publisher:
        batch = publisher.batch()
        for item in [event(i) for i in range(3)]:  # one loop turn: one envelope of three
            await batch.add(item)
        # No flush: a partial envelope must not wait for 97 more events (or for ever, from a quiet stdin).
        await eventually(lambda: batch.confirmed == 3, 10, 0.01, message="the partial envelope confirmed")
        await batch.add(event(3))
        await eventually(lambda: batch.confirmed == 4, 10, 0.01, message="the lone event confirmed")
        await batch.flush()

    ids = await drain(connection, topology.queue)
    assert len(ids) == 2 and "e3" in ids, ids  # the envelope of three, then the fourth event on its own


async def test_nacks_of_a_full_queue_are_re_sent_and_the_error_names_exactly_what_was_never_confirmed(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    # The aggregator queue is bound to nothing the test publishes; a quorum queue that rejects publishes
    # once it holds 20 messages takes everything, so its nacks are the broker's real ones.
    topology = Topology(
        topology.exchange, topology.queue, topology.dead_letter_exchange, topology.dead_letter_queue, "none"
    )
    channel = await connection.channel()
    exchange = await declare_exchange(channel, topology)
    bounded = await channel.declare_queue(
        f"{topology.queue}.bounded",
        durable=True,
        arguments={"x-queue-type": "quorum", "x-max-length": 20, "x-overflow": "reject-publish"},
    )
    await bounded.bind(exchange, "#")
    events = [event(i) for i in range(300)]
    confirmed: Counter[str] = Counter()
    options = PublishOptions(envelope_size=1, linger=0, max_attempts=3, retry_backoff=0.01)
    async with ConfirmingPublisher.open(connection, topology, options) as publisher:
        frames = spy_on_confirms(publisher)
        batch = publisher.batch(lambda done: confirmed.update(e.event_id for e in done))
        for item in events:
            await batch.add(item)
        with pytest.raises(PublishFailed) as caught:
            await batch.flush()
        opened = publisher.channels_opened

    unconfirmed = Counter(e.event_id for e in caught.value.unconfirmed)
    assert type(caught.value) is PublishFailed
    assert "nacked by the broker 3 time(s)" in caught.value.reason
    assert set(confirmed) | set(unconfirmed) == {e.event_id for e in events}
    assert not set(confirmed) & set(unconfirmed)
    assert max(confirmed.values()) == 1 and max(unconfirmed.values()) == 1
    # A nack means "not taken responsibility for", not "not stored": RabbitMQ 3.10's quorum queue stores
    # some messages it nacks. What was confirmed must be there.
    assert set(confirmed) <= set(await drain(connection, bounded.name))
    assert any(isinstance(frame, spec.Basic.Nack) for frame in frames)
    # Three nacks on a channel retire it; the re-sends went out on fresh channels.
    assert opened > 1
    await channel.close()


async def test_one_returned_message_among_many_in_flight_is_the_only_one_reported_unroutable(
    connection: AbstractRobustConnection, topology: Topology
) -> None:
    topology = Topology(
        topology.exchange, topology.queue, topology.dead_letter_exchange, topology.dead_letter_queue, "good.#"
    )
    events = [event(i, "good.t") for i in range(600)]
    stray = event(10_000, "bad.t")
    events.insert(300, stray)
    confirmed: Counter[str] = Counter()
    options = PublishOptions(envelope_size=1, linger=0)
    async with ConfirmingPublisher.open(connection, topology, options) as publisher:
        batch = publisher.batch(lambda done: confirmed.update(e.event_id for e in done))
        for item in events:
            await batch.add(item)
        with pytest.raises(Unroutable) as caught:
            await batch.flush()

    assert caught.value.unconfirmed == [stray]
    assert confirmed == Counter(e.event_id for e in events if e is not stray)
    assert sorted(await drain(connection, topology.queue)) == sorted(confirmed)


async def test_a_connection_cut_with_hundreds_in_flight_confirms_each_event_once_or_names_it(
    broker: Broker, topology: Topology
) -> None:
    target = urlsplit(broker.url)
    proxy = FreezableProxy(target.hostname or "127.0.0.1", target.port or 5672).start()
    via_proxy = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    events = [event(i) for i in range(1500)]
    confirmed: Counter[str] = Counter()
    unconfirmed: list[Event] = []
    options = PublishOptions(envelope_size=1, linger=0, max_in_flight=256)
    try:
        connection = await aio_pika.connect_robust(via_proxy, reconnect_interval=0.2)
        async with connection, ConfirmingPublisher.open(connection, topology, options) as publisher:
            batch = publisher.batch(lambda done: confirmed.update(e.event_id for e in done))
            with proxy.frozen():  # the broker's confirms are held back: everything written stays in flight
                for item in events[:400]:
                    await batch.add(item)
                await eventually(lambda: publisher.in_flight == 256, 10, 0.01, message="256 in flight")
                proxy.cut()
                await eventually(lambda: publisher.in_flight == 0, 10, 0.01, message="the channel is gone")
            for item in events[400:]:
                await batch.add(item)
            try:
                await batch.flush()
            except PublishFailed as exc:
                unconfirmed = exc.unconfirmed
            opened = publisher.channels_opened
    finally:
        proxy.close()

    failed = Counter(e.event_id for e in unconfirmed)
    assert set(confirmed) | set(failed) == {e.event_id for e in events}, "an event was silently dropped"
    assert not set(confirmed) & set(failed)
    assert max(confirmed.values()) == 1
    assert opened == 2
    assert not unconfirmed  # five attempts easily outlast one cut
    direct = await aio_pika.connect(broker.url)
    async with direct:
        stored = Counter(await drain(direct, topology.queue))  # type: ignore[arg-type]
    # Every confirmed event is in the queue; what was in flight at the cut may be there twice.
    assert set(stored) == set(confirmed)
    assert 1500 <= sum(stored.values()) <= 1500 + 256
