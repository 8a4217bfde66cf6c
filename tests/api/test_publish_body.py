"""parse_body: the four request shapes, whole-request validation with FastAPI-style locations, limits; what
it refuses comes back as a Refusal (422 or 413), never raised."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from api.publish import Refusal, parse_body
from contract.event import Event, Limits

LIMITS = Limits()
MAX_EVENTS = 10


def fields(event_id: str = "e1", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "topic": "orders",
        "event_id": event_id,
        "timestamp": "2026-11-22T10:15:00+01:00",
        "source": "checkout",
        "payload": {"n": 1},
    }
    base.update(overrides)
    return base


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


def parse(value: Any, limits: Limits = LIMITS, max_events: int = MAX_EVENTS) -> list[Event]:
    events = parse_body(raw(value), limits, max_events)
    assert not isinstance(events, Refusal), events
    return events


def invalid_body(body: bytes, limits: Limits = LIMITS) -> list[dict[str, Any]]:
    """The 422's error items for a body parse_body refuses as invalid."""
    refused = parse_body(body, limits, MAX_EVENTS)
    assert isinstance(refused, Refusal) and refused.status == 422 and refused.errors is not None, refused
    return refused.errors


def invalid(value: Any, limits: Limits = LIMITS) -> list[dict[str, Any]]:
    return invalid_body(raw(value), limits)


def too_large(value: Any, limits: Limits = LIMITS) -> str:
    """The 413's detail for a body parse_body refuses as too large."""
    refused = parse_body(raw(value), limits, MAX_EVENTS)
    assert isinstance(refused, Refusal) and refused.status == 413 and refused.errors is None, refused
    return refused.detail


def locs(errors: list[dict[str, Any]]) -> list[list[str | int]]:
    return [error["loc"] for error in errors]


# --- accepted shapes ---------------------------------------------------------------------------------------


def test_one_event_object_is_one_event() -> None:
    assert parse(fields()) == [Event.model_validate(fields())]


def test_an_array_is_its_events_in_order() -> None:
    events = parse([fields("a"), fields("b"), fields("c")])

    assert [e.event_id for e in events] == ["a", "b", "c"]


def test_an_events_wrapper_with_an_array_is_its_events() -> None:
    events = parse({"events": [fields("a"), fields("b")]})

    assert [e.event_id for e in events] == ["a", "b"]


def test_an_events_wrapper_with_one_object_is_one_event() -> None:
    events = parse({"events": fields("a")})

    assert [e.event_id for e in events] == ["a"]


def test_an_empty_array_is_no_events() -> None:
    assert parse([]) == []


def test_an_empty_events_wrapper_is_no_events() -> None:
    assert parse({"events": []}) == []


def test_accepted_events_are_normalised_like_the_consumer_normalises_them() -> None:
    (event,) = parse(fields())

    assert event.timestamp == "2026-11-22T09:15:00Z"


def test_exactly_max_events_is_accepted() -> None:
    events = parse([fields(str(i)) for i in range(MAX_EVENTS)])

    assert len(events) == MAX_EVENTS


def test_a_payload_exactly_at_the_limit_is_accepted() -> None:
    (event,) = parse(fields(payload={"x": "a" * 10}), limits=Limits(max_payload_bytes=18))

    assert event.payload == {"x": "a" * 10}


# --- invalid requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b"not json", b"", b'[{"topic": "t"},', b"\xff\xfe"])
def test_malformed_json_is_invalid_at_the_body(body: bytes) -> None:
    (error,) = invalid_body(body)
    assert error["loc"] == ["body"]
    assert error["type"] == "json_invalid"


@pytest.mark.parametrize("value", [5, 4.5, "an event", None, True])
def test_a_body_of_another_shape_is_invalid_at_the_body(value: Any) -> None:
    errors = invalid(value)

    assert locs(errors) == [["body"]]


@pytest.mark.parametrize("inner", [5, "x", None, True])
def test_an_events_wrapper_holding_neither_an_event_nor_an_array_is_invalid(inner: Any) -> None:
    errors = invalid({"events": inner})

    assert locs(errors) == [["body", "events"]]


def test_an_invalid_event_in_an_array_is_named_by_index_and_field() -> None:
    errors = invalid([fields("a"), fields("b"), fields("c", topic="bad topic"), fields("d")])

    assert locs(errors) == [["body", 2, "topic"]]


def test_an_invalid_event_in_an_events_wrapper_is_named_by_index_and_field() -> None:
    errors = invalid({"events": [fields("a"), fields("b"), fields("c", timestamp="yesterday")]})

    assert locs(errors) == [["body", "events", 2, "timestamp"]]


def test_an_invalid_single_event_is_named_by_field() -> None:
    errors = invalid(fields(event_id=""))

    assert locs(errors) == [["body", "event_id"]]


@pytest.mark.parametrize("name", ["topic", "event_id", "timestamp", "source"])
def test_a_missing_field_is_reported_as_missing_at_its_location(name: str) -> None:
    item = fields()
    del item[name]

    (error,) = invalid([fields("ok"), item])

    assert error["loc"] == ["body", 1, name]
    assert error["type"] == "missing"


def test_an_array_item_that_is_not_an_object_is_named_by_index() -> None:
    errors = invalid([fields("a"), 7])

    assert locs(errors) == [["body", 1]]


def test_every_error_of_every_bad_event_is_listed() -> None:
    bad_one = fields("b", topic="a*b", payload=[1])
    del bad_one["source"]
    errors = invalid([fields("a"), bad_one, fields("c"), fields("", timestamp=5)])

    assert sorted(map(str, locs(errors))) == sorted(
        map(
            str,
            [
                ["body", 1, "topic"],
                ["body", 1, "source"],
                ["body", 1, "payload"],
                ["body", 3, "event_id"],
                ["body", 3, "timestamp"],
            ],
        )
    )


def test_every_error_has_the_fastapi_shape() -> None:
    errors = invalid([fields(topic="a#")])

    (error,) = errors
    assert set(error) == {"type", "loc", "msg", "input"}
    assert error["input"] == "a#"
    json.dumps(errors)  # the api returns these as the 422 body


# --- limits ------------------------------------------------------------------------------------------------


def test_more_than_max_events_is_too_large() -> None:
    detail = too_large([fields(str(i)) for i in range(MAX_EVENTS + 1)])

    assert re.search(f"{MAX_EVENTS + 1} events in one request; the limit is {MAX_EVENTS}", detail)


def test_more_than_max_events_in_a_wrapper_is_too_large() -> None:
    too_large({"events": [fields(str(i)) for i in range(MAX_EVENTS + 1)]})


def test_a_payload_over_the_limit_is_too_large_and_names_the_item() -> None:
    items = [fields("a"), fields("b"), fields("c", payload={"x": "a" * 11})]

    detail = too_large(items, limits=Limits(max_payload_bytes=18))

    assert re.search(r"over the limit of 18 bytes: body\.2\.payload is 19 bytes", detail)


def test_a_single_event_payload_over_the_limit_names_the_body_payload() -> None:
    detail = too_large(fields(payload={"x": "a" * 11}), limits=Limits(max_payload_bytes=18))

    assert re.search(r"body\.payload is 19 bytes", detail)


def test_a_wrapped_event_payload_over_the_limit_names_its_place_in_the_wrapper() -> None:
    items = {"events": [fields("a"), fields("b", payload={"x": "a" * 11})]}

    detail = too_large(items, limits=Limits(max_payload_bytes=18))

    assert re.search(r"body\.events\.1\.payload is 19 bytes", detail)


def test_an_invalid_event_wins_over_an_oversized_payload() -> None:
    items = [fields("a", payload={"x": "a" * 11}), fields("b", topic="")]

    errors = invalid(items, limits=Limits(max_payload_bytes=18))

    assert locs(errors) == [["body", 1, "topic"]]


def test_a_timestamp_that_cannot_be_expressed_in_utc_is_invalid() -> None:
    errors = invalid([fields(timestamp="0001-01-01T00:00:00+01:00")])

    assert locs(errors) == [["body", 0, "timestamp"]]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_body_with_a_non_json_number_is_malformed_json(literal: str) -> None:
    body = raw([fields("a"), fields("b", payload={"x": 0})]).replace(
        b'{"x": 0}', b'{"x": ' + literal.encode() + b"}"
    )

    (error,) = invalid_body(body)
    assert error["loc"] == ["body"]
    assert error["type"] == "json_invalid"
    assert f"{literal} is not valid JSON" in error["msg"]


def test_a_body_nested_deeper_than_the_parser_allows_is_malformed_json_not_a_crash() -> None:
    deep = b'{"topic": "t", "event_id": "e", "timestamp": "2026-01-01", "source": "s", "payload": {"x": '
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}}"

    assert invalid_body(deep)[0]["loc"] == ["body"]
