"""The HTTP publish shim's request handling: the four body shapes, whole-request validation, and limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from contract.event import Event, Limits


class PayloadTooLarge(Exception):
    """Past a configured limit: HTTP 413."""


@dataclass(frozen=True, slots=True)
class RequestInvalid(Exception):
    """Malformed or invalid request: HTTP 422 with FastAPI-style items."""

    errors: list[dict[str, Any]]


def _error(loc: list[str | int], msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


def _reject_constant(name: str) -> Any:
    # Python's parser accepts NaN and Infinity; JSON does not, and no client could read them back.
    raise ValueError(f"{name} is not valid JSON")


_ARRAY = TypeAdapter(list[Event])
_ONE = TypeAdapter(Event)


def _valid_events(raw: bytes) -> list[Event] | None:
    """The events of a body that is a JSON array of valid events, or one valid event object, parsed and
    validated in one pass by pydantic-core; None for anything else (another shape, or something wrong), which
    the thorough path below then describes item by item. Most requests are valid, and this pass is several
    times faster than `json.loads` followed by validating each item from Python objects. An object that is a
    valid event is one event whatever else it holds, as the thorough path reads it (`events` beside `topic`
    does not make a wrapper)."""
    first = raw.lstrip()[:1]
    try:
        if first == b"[":
            return _ARRAY.validate_json(raw)
        if first == b"{":
            return [_ONE.validate_json(raw)]
    except ValidationError:
        return None
    return None


def parse_body(raw: bytes, limits: Limits, max_events: int) -> list[Event]:
    """Every event of the request, or an exception describing everything wrong with it."""
    fast = _valid_events(raw)
    if fast is not None:
        if len(fast) > max_events:
            raise PayloadTooLarge(f"{len(fast)} events in one request; the limit is {max_events}")
        single = raw.lstrip()[:1] == b"{"
        too_big = [
            f"body{'' if single else f'.{index}'}.payload is {event.payload_size()} bytes"
            for index, event in enumerate(fast)
            if event.payload_size() > limits.max_payload_bytes
        ]
        if too_big:
            raise PayloadTooLarge(
                f"payload over the limit of {limits.max_payload_bytes} bytes: " + ", ".join(too_big[:5])
            )
        return fast
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestInvalid([_error(["body"], f"malformed JSON: {exc}", "json_invalid")]) from exc
    items, prefix, single = _items(data)
    if len(items) > max_events:
        raise PayloadTooLarge(f"{len(items)} events in one request; the limit is {max_events}")
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    oversized: list[str] = []
    for index, item in enumerate(items):
        loc: list[str | int] = list(prefix) if single else [*prefix, index]
        if not isinstance(item, dict):
            errors.append(_error(loc, "an event must be a JSON object", "model_type", item))
            continue
        try:
            event = Event.model_validate(item)
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                errors.append(_error([*loc, *e["loc"]], e["msg"], e["type"], e.get("input")))
            continue
        size = event.payload_size()
        if size > limits.max_payload_bytes:
            where = ".".join(str(part) for part in [*loc, "payload"])
            oversized.append(f"{where} is {size} bytes")
        events.append(event)
    if errors:
        raise RequestInvalid(errors)
    if oversized:
        raise PayloadTooLarge(
            f"payload over the limit of {limits.max_payload_bytes} bytes: " + ", ".join(oversized[:5])
        )
    return events


def _items(data: Any) -> tuple[list[Any], list[str | int], bool]:
    """The raw events, the location prefix for errors, and whether the body held one event (no index)."""
    if isinstance(data, list):
        return data, ["body"], False
    if isinstance(data, dict):
        if "events" in data and "topic" not in data:
            inner = data["events"]
            if isinstance(inner, list):
                return inner, ["body", "events"], False
            if isinstance(inner, dict):
                return [inner], ["body", "events"], True
            raise RequestInvalid(
                [
                    _error(
                        ["body", "events"],
                        "`events` must be an event or an array of events",
                        "type_error",
                        inner,
                    )
                ]
            )
        return [data], ["body"], True
    raise RequestInvalid(
        [
            _error(
                ["body"],
                'the body must be an event, an array of events, or {"events": [...]}',
                "model_type",
                data,
            )
        ]
    )
