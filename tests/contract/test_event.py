"""The wire format of a message body: one event or an envelope; validation, normalisation, encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contract.event import MAX_PAYLOAD_DEPTH, Event, InvalidEvent, Limits, decode, encode

LIMITS = Limits()


def fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "topic": "orders.created",
        "event_id": "order_1",
        "timestamp": "2026-11-22T10:15:00Z",
        "source": "checkout",
        "payload": {"amount": 42.5},
    }
    base.update(overrides)
    return base


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def without(name: str) -> dict[str, Any]:
    item = fields()
    del item[name]
    return item


# --- accepted bodies ---------------------------------------------------------------------------------------


def test_a_single_event_object_decodes_to_one_event() -> None:
    events = decode(body(fields()), LIMITS)

    assert events == [
        Event(
            topic="orders.created",
            event_id="order_1",
            timestamp="2026-11-22T10:15:00Z",
            source="checkout",
            payload={"amount": 42.5},
        )
    ]


def test_an_envelope_decodes_to_its_events_in_order() -> None:
    events = decode(body([fields(event_id="a"), fields(event_id="b"), fields(event_id="c")]), LIMITS)

    assert [e.event_id for e in events] == ["a", "b", "c"]


def test_an_empty_envelope_decodes_to_no_events() -> None:
    assert decode(b"[]", LIMITS) == []


def test_leading_whitespace_before_an_envelope_still_reads_it_as_an_envelope() -> None:
    events = decode(b" \n\t " + body([fields(event_id="a"), fields(event_id="b")]), LIMITS)

    assert [e.event_id for e in events] == ["a", "b"]


def test_leading_whitespace_before_a_single_event_is_accepted() -> None:
    events = decode(b"\n  " + body(fields()), LIMITS)

    assert [e.event_id for e in events] == ["order_1"]


def test_payload_is_optional_and_defaults_to_an_empty_object() -> None:
    (event,) = decode(body(without("payload")), LIMITS)

    assert event.payload == {}


@pytest.mark.parametrize(
    "topic", ["a", "orders.created", "orders_created", "orders-created", "ns:orders", "A.b_c-d:9"]
)
def test_topics_of_letters_digits_dot_underscore_dash_and_colon_are_valid(topic: str) -> None:
    (event,) = decode(body(fields(topic=topic)), LIMITS)

    assert event.topic == topic


def test_a_topic_of_255_characters_is_valid() -> None:
    (event,) = decode(body(fields(topic="t" * 255)), LIMITS)

    assert event.topic == "t" * 255


@pytest.mark.parametrize(
    "event_id", ["a/b", "tenant/42/order/7", "e" * 255, "550e8400-e29b-41d4-a716-446655440000"]
)
def test_event_ids_with_slashes_and_up_to_255_characters_are_valid(event_id: str) -> None:
    (event,) = decode(body(fields(event_id=event_id)), LIMITS)

    assert event.event_id == event_id


def test_a_payload_exactly_at_the_limit_is_accepted() -> None:
    payload = {"x": "a" * 10}  # {"x":"aaaaaaaaaa"} is 18 bytes
    (event,) = decode(body(fields(payload=payload)), Limits(max_payload_bytes=18))

    assert event.payload == payload


def test_a_message_exactly_at_the_size_limit_is_accepted() -> None:
    raw = body(fields())

    assert len(decode(raw, Limits(max_message_bytes=len(raw)))) == 1


# --- rejected bodies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"topic": "t",', id="truncated"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"topic": "\xff"}', id="not-utf8-inside-a-string"),
        pytest.param(b"42", id="number"),
        pytest.param(b'"an event"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="boolean"),
        pytest.param(b"[1, 2]", id="envelope-of-numbers"),
        pytest.param(b"[[]]", id="nested-envelope"),
    ],
)
def test_a_body_that_is_not_an_event_or_an_envelope_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode(raw, LIMITS)


@pytest.mark.parametrize("name", ["topic", "event_id", "timestamp", "source"])
def test_a_missing_required_field_is_invalid(name: str) -> None:
    with pytest.raises(InvalidEvent, match=name):
        decode(body(without(name)), LIMITS)


@pytest.mark.parametrize("name", ["topic", "event_id", "timestamp", "source"])
def test_a_required_field_that_is_null_is_invalid(name: str) -> None:
    with pytest.raises(InvalidEvent, match=name):
        decode(body(fields(**{name: None})), LIMITS)


def test_an_empty_event_id_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="event_id"):
        decode(body(fields(event_id="")), LIMITS)


def test_an_event_id_of_256_characters_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="event_id"):
        decode(body(fields(event_id="e" * 256)), LIMITS)


def test_an_event_id_that_is_a_number_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="event_id"):
        decode(body(fields(event_id=12345)), LIMITS)


def test_an_empty_source_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="source"):
        decode(body(fields(source="")), LIMITS)


def test_a_source_of_256_characters_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="source"):
        decode(body(fields(source="s" * 256)), LIMITS)


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("orders.*", id="star"),
        pytest.param("orders.#", id="hash"),
        pytest.param("orders created", id="space"),
        pytest.param("", id="empty"),
        pytest.param("t" * 256, id="256-chars"),
        pytest.param("orders/created", id="slash"),
        pytest.param("orders\n", id="trailing-newline"),
        pytest.param("ordérs", id="non-ascii-letter"),
    ],
)
def test_an_invalid_topic_is_rejected(topic: str) -> None:
    with pytest.raises(InvalidEvent, match="topic"):
        decode(body(fields(topic=topic)), LIMITS)


@pytest.mark.parametrize(
    "stamp", ["yesterday", "2026-13-01T00:00:00Z", "22/11/2026 10:15", "2026-11-22T25:00:00Z", ""]
)
def test_a_timestamp_that_is_not_iso_8601_is_invalid(stamp: str) -> None:
    with pytest.raises(InvalidEvent, match="timestamp"):
        decode(body(fields(timestamp=stamp)), LIMITS)


@pytest.mark.parametrize("stamp", [1763806500, 1763806500.5])
def test_a_timestamp_given_as_a_number_is_invalid(stamp: float) -> None:
    with pytest.raises(InvalidEvent, match="timestamp"):
        decode(body(fields(timestamp=stamp)), LIMITS)


@pytest.mark.parametrize(
    "stamp",
    [
        # Valid ISO 8601 whose UTC equivalent falls outside datetime's range (year 1..9999).
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
        pytest.param("9999-12-31T23:30:00-01:00", id="after-year-9999-in-utc"),
    ],
)
def test_a_timestamp_that_cannot_be_expressed_in_utc_is_invalid(stamp: str) -> None:
    with pytest.raises(InvalidEvent, match="timestamp"):
        decode(body(fields(timestamp=stamp)), LIMITS)


@pytest.mark.parametrize("payload", [[1, 2], "text", None, 7])
def test_a_payload_that_is_not_an_object_is_invalid(payload: Any) -> None:
    with pytest.raises(InvalidEvent, match="payload"):
        decode(body(fields(payload=payload)), LIMITS)


def test_a_payload_one_byte_over_the_limit_is_invalid() -> None:
    payload = {"x": "a" * 11}  # 19 bytes
    with pytest.raises(InvalidEvent, match="payload of 19 bytes is over the limit of 18 bytes"):
        decode(body(fields(payload=payload)), Limits(max_payload_bytes=18))


def test_the_payload_limit_counts_utf8_bytes_not_characters() -> None:
    payload = {"x": "é" * 10}  # 10 characters, 20 bytes of UTF-8: {"x":"..."} is 28 bytes
    with pytest.raises(InvalidEvent, match="payload of 28 bytes"):
        decode(body(fields(payload=payload)), Limits(max_payload_bytes=27))


def test_a_message_one_byte_over_the_size_limit_is_invalid() -> None:
    raw = body(fields())
    with pytest.raises(InvalidEvent, match=f"message of {len(raw)} bytes is over the limit"):
        decode(raw, Limits(max_message_bytes=len(raw) - 1))


def test_one_bad_event_invalidates_the_whole_envelope() -> None:
    raw = body([fields(event_id="a"), fields(event_id="b", topic="bad topic"), fields(event_id="c")])

    with pytest.raises(InvalidEvent, match="topic"):
        decode(raw, LIMITS)


def test_one_oversized_payload_invalidates_the_whole_envelope() -> None:
    raw = body([fields(event_id="a", payload={}), fields(event_id="b", payload={"x": "a" * 100})])

    with pytest.raises(InvalidEvent, match="over the limit"):
        decode(raw, Limits(max_payload_bytes=50))


def test_the_invalid_event_error_chains_its_cause() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(body(without("source")), LIMITS)

    assert caught.value.__cause__ is not None


# --- timestamp normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        pytest.param("2026-11-22T10:15:00Z", "2026-11-22T10:15:00Z", id="zulu"),
        pytest.param("2026-11-22T10:15:00+00:00", "2026-11-22T10:15:00Z", id="zero-offset"),
        pytest.param("2026-11-22T10:15:00+02:00", "2026-11-22T08:15:00Z", id="positive-offset"),
        pytest.param("2026-11-22T23:30:00-05:00", "2026-11-23T04:30:00Z", id="negative-offset-next-day"),
        pytest.param("2026-11-22T10:15:00", "2026-11-22T10:15:00Z", id="no-offset-is-utc"),
        pytest.param("2026-11-22T10:15:00.5Z", "2026-11-22T10:15:00.500000Z", id="fraction"),
        pytest.param("2026-11-22T10:15:00.123456+01:00", "2026-11-22T09:15:00.123456Z", id="micros-offset"),
    ],
)
def test_timestamps_are_normalised_to_utc_with_a_z_suffix(given: str, stored: str) -> None:
    (event,) = decode(body(fields(timestamp=given)), LIMITS)

    assert event.timestamp == stored


# --- encoding ----------------------------------------------------------------------------------------------


def test_one_event_encodes_as_a_plain_object_and_round_trips() -> None:
    (event,) = decode(body(fields(timestamp="2026-11-22T12:15:00+02:00")), LIMITS)

    raw = encode([event])

    assert isinstance(json.loads(raw), dict)
    assert decode(raw, LIMITS) == [event]


def test_several_events_encode_as_an_envelope_and_round_trip() -> None:
    events = decode(
        body([fields(event_id="a"), fields(event_id="b/c", payload={"nested": {"list": [1, "x", None]}})]),
        LIMITS,
    )

    raw = encode(events)

    assert isinstance(json.loads(raw), list)
    assert decode(raw, LIMITS) == events


def test_non_ascii_content_round_trips() -> None:
    (event,) = decode(body(fields(source="café", payload={"msg": "grüße 🎉"})), LIMITS)

    assert decode(encode([event]), LIMITS) == [event]


# --- content hash and payload serialisation ----------------------------------------------------------------


def test_identical_events_have_the_same_content_hash() -> None:
    first = Event.model_validate(fields())
    second = Event.model_validate(fields())

    assert first.content_hash() == second.content_hash()


def test_the_content_hash_ignores_payload_key_order() -> None:
    first = Event.model_validate(fields(payload={"a": 1, "b": 2}))
    second = Event.model_validate(fields(payload={"b": 2, "a": 1}))

    assert first.content_hash() == second.content_hash()


def test_the_content_hash_differs_when_the_payload_differs() -> None:
    first = Event.model_validate(fields(payload={"amount": 1}))
    second = Event.model_validate(fields(payload={"amount": 2}))

    assert first.content_hash() != second.content_hash()


def test_the_content_hash_is_the_same_for_equivalent_timestamps() -> None:
    first = Event.model_validate(fields(timestamp="2026-11-22T10:15:00Z"))
    second = Event.model_validate(fields(timestamp="2026-11-22T12:15:00+02:00"))

    assert first.content_hash() == second.content_hash()


def test_payload_json_preserves_the_payload() -> None:
    payload = {"amount": 42.5, "tags": ["a", "b"], "nested": {"ok": True, "none": None}, "text": "grüße"}
    event = Event.model_validate(fields(payload=payload))

    assert json.loads(event.payload_json()) == payload
    assert "grüße" in event.payload_json()


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_payload_with_a_non_json_number_is_invalid(literal: bytes) -> None:
    raw = body(fields(payload={"x": 0})).replace(b'{"x": 0}', b'{"x": ' + literal + b"}")

    with pytest.raises(InvalidEvent, match="payload"):
        decode(raw, LIMITS)


def test_a_payload_nested_up_to_the_depth_limit_is_valid_and_one_level_more_is_not() -> None:
    def nested(depth: int) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for _ in range(depth - 1):
            payload = {"x": payload}
        return payload

    (ok,) = decode(body(fields(payload=nested(MAX_PAYLOAD_DEPTH))), LIMITS)
    assert ok.payload == nested(MAX_PAYLOAD_DEPTH)
    with pytest.raises(InvalidEvent, match="nested more than 64 levels"):
        decode(body(fields(payload=nested(MAX_PAYLOAD_DEPTH + 1))), LIMITS)
    lists: list[Any] = []
    for _ in range(MAX_PAYLOAD_DEPTH):
        lists = [lists]
    with pytest.raises(InvalidEvent, match="nested more than 64 levels"):
        decode(body(fields(payload={"lists": lists})), LIMITS)
