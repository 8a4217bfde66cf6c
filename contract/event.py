"""The event model and the wire format of a message body: one event or an envelope (a JSON array)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticSerializationError, to_json

TOPIC_PATTERN = r"^[A-Za-z0-9._:-]{1,255}$"
_TOPIC_RE = re.compile(TOPIC_PATTERN)

# The header `POST /publish?wait=stored` sets on each of its messages (api/stored.py); the consumer records it
# in the batch's transaction with how many of the message's events were new, so the api can answer exactly.
RECEIPT_HEADER = "x-receipt"

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# The consumer's JSON parser stops at about 200 levels; a fixed, much lower limit on payloads makes "valid"
# mean the same to every entry point (HTTP shim, CLI, consumer) whatever envelope an event travels in.
MAX_PAYLOAD_DEPTH = 64


class InvalidEvent(ValueError):
    """A message body that can never be processed: not JSON, not the schema, or over a limit.

    `kind` classes the reason (`not_json`, `schema`, `too_large`) so dead letters can be counted by it.
    """

    def __init__(self, reason: str, kind: str = "schema") -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


EXAMPLE: dict[str, Any] = {
    "topic": "orders.created",
    "event_id": "order_12345",
    "timestamp": "2026-11-22T10:15:00Z",
    "source": "checkout-service",
    "payload": {"amount": 42.5, "currency": "EUR"},
}


class Event(BaseModel):
    """One log event. `timestamp` is normalised to UTC ISO 8601 with a `Z` suffix on validation."""

    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={"examples": [EXAMPLE]},
    )

    topic: Annotated[str, Field(pattern=TOPIC_PATTERN, description="Letters, digits, `.`, `_`, `-`, `:`")]
    event_id: Annotated[str, Field(min_length=1, max_length=255)]
    timestamp: Annotated[str, Field(description="ISO 8601; no offset means UTC; stored in UTC")]
    source: Annotated[str, Field(min_length=1, max_length=255)]
    payload: dict[str, Any] = Field(default_factory=dict)

    # The serialised payload and its size in bytes, set once by validation. Kept in the instance __dict__
    # rather than as pydantic private attributes, whose per-instance set-up and lookup cost more than the
    # rest of decoding an event; pydantic serialises and compares only the fields, so they stay invisible.
    _payload_json: ClassVar[str]
    _payload_size: ClassVar[int]

    @field_validator("timestamp")
    @classmethod
    def _normalise_timestamp(cls, value: str) -> str:
        return normalise_timestamp(value)

    @model_validator(mode="after")
    def _serialise_payload(self) -> Event:
        # Serialised once here: it is what gets stored and what the size limit applies to.
        raw = serialise_payload(self.payload)
        self.__dict__["_payload_json"] = raw.decode()
        self.__dict__["_payload_size"] = len(raw)
        return self

    def key(self) -> tuple[str, str]:
        return (self.topic, self.event_id)

    def payload_json(self) -> str:
        return self._payload_json

    def payload_size(self) -> int:
        """Bytes of the serialised payload (UTF-8): what the size limit applies to."""
        return self._payload_size

    def content_hash(self) -> bytes:
        """Hash of what a publisher means by the event; a reused id with other content is a conflict."""
        return content_hash(self.timestamp, self.source, self.payload)


def serialise_payload(payload: dict[str, Any]) -> bytes:
    """Compact JSON (UTF-8) of a payload, or ValueError if it is too deep or holds NaN/Infinity.

    pydantic-core's serialiser is several times faster than the json module and writes the same compact,
    non-ASCII-escaped text. It writes NaN and Infinity as bare constants, which no JSON client could read
    back (the parser accepts them), so their presence is ruled out; only a payload that contains those
    letters at all pays for the exact check.
    """
    try:
        raw = to_json(payload, inf_nan_mode="constants")
    except PydanticSerializationError as exc:
        raise ValueError(f"payload is not valid JSON: {exc}") from None
    if (b"NaN" in raw or b"Infinity" in raw) and _has_non_finite(payload):
        raise ValueError("payload is not valid JSON: NaN and Infinity are not JSON numbers")
    # Nesting needs an opening bracket per level; only a payload with that many brackets is walked.
    if raw.count(b"{") + raw.count(b"[") > MAX_PAYLOAD_DEPTH and _deeper_than(payload, MAX_PAYLOAD_DEPTH):
        raise ValueError(f"payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep")
    return raw


def _has_non_finite(payload: dict[str, Any]) -> bool:
    try:
        json.dumps(payload, allow_nan=False)
    except ValueError:
        return True
    return False


def _deeper_than(value: dict[str, Any], limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def content_hash(timestamp: str, source: str, payload: dict[str, Any]) -> bytes:
    """Order-insensitive for payload keys: the same object re-serialised by another client is no conflict."""
    canonical = json.dumps(
        [timestamp, source, payload], separators=(",", ":"), ensure_ascii=False, sort_keys=True
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


# Already normalised: UTC with a `Z`, whole seconds or six fractional digits (not all zero, which the
# normalised form drops). Such a value only needs checking, not rewriting.
_CANONICAL_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(?!000000)\d{6})?Z")


def normalise_timestamp(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
        if _CANONICAL_TIMESTAMP.fullmatch(value):
            return value
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # astimezone overflows for instants outside the years 1-9999 once shifted to UTC.
        return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError):
        raise ValueError(f"not an ISO 8601 timestamp in the years 1-9999 UTC: {value!r}") from None


_ONE = TypeAdapter(Event)
_MANY = TypeAdapter(list[Event])


class EncodedEvent:
    """An event already in its wire form: the JSON object `Event.model_dump_json()` gives for it, byte for
    byte, with its key beside it. Only a producer that builds valid events by construction makes these (the
    load generator, publisher/load.py, whose tests compare its bytes with the model's); they skip the model
    and the second serialisation on the publish path. `event()` is the same event as a validated model.
    """

    __slots__ = ("body", "event_id", "topic")

    def __init__(self, topic: str, event_id: str, body: bytes) -> None:
        self.topic = topic
        self.event_id = event_id
        self.body = body

    def key(self) -> tuple[str, str]:
        return (self.topic, self.event_id)

    def event(self) -> Event:
        return _ONE.validate_json(self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncodedEvent):
            return NotImplemented
        return self.body == other.body

    def __hash__(self) -> int:
        return hash(self.body)

    def __repr__(self) -> str:
        return f"EncodedEvent({self.body.decode()})"


# What the publish path takes: a validated model, or an event already encoded (above).
AnyEvent = Event | EncodedEvent


def check_payload_size(event: Event, limits: Limits) -> None:
    size = event.payload_size()
    if size > limits.max_payload_bytes:
        raise InvalidEvent(
            f"payload of {size} bytes is over the limit of {limits.max_payload_bytes} bytes", "too_large"
        )


def decode(body: bytes, limits: Limits) -> list[Event]:
    """Decode a message body into its events, or raise InvalidEvent for the whole message."""
    if len(body) > limits.max_message_bytes:
        raise InvalidEvent(
            f"message of {len(body)} bytes is over the limit of {limits.max_message_bytes} bytes", "too_large"
        )
    # Peek at the first non-blank byte rather than parsing twice: '[' is an envelope, anything else one event.
    stripped = body.lstrip()
    try:
        if stripped[:1] == b"[":
            events = _MANY.validate_json(body)
        else:
            events = [_ONE.validate_json(body)]
    except ValidationError as exc:
        not_json = any(error["type"] == "json_invalid" for error in exc.errors(include_url=False))
        raise InvalidEvent(describe(exc), "not_json" if not_json else "schema") from exc
    for event in events:
        check_payload_size(event, limits)
    return events


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(loc) for loc in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def encode(events: Sequence[AnyEvent]) -> bytes:
    """An envelope for several events, a plain object for one (readable by any consumer of single events).

    Encoded events are joined as they are: the same bytes pydantic writes for their models."""
    if len(events) == 1:
        first = events[0]
        return first.body if isinstance(first, EncodedEvent) else _ONE.dump_json(first)
    if all(isinstance(item, Event) for item in events):
        return _MANY.dump_json(cast(list[Event], events if isinstance(events, list) else list(events)))
    return encode_array(events)


def encode_array(events: Sequence[AnyEvent]) -> bytes:
    """A JSON array of the events, also of one (the body of `POST /publish`)."""
    return b"[" + b",".join(_one_json(item) for item in events) + b"]"


def _one_json(item: AnyEvent) -> bytes:
    return item.body if isinstance(item, EncodedEvent) else _ONE.dump_json(item)


def message_id(events: Sequence[AnyEvent], otherwise: str) -> str:
    """A message's AMQP message id, for the consumer's logs: a lone event's id when it fits an AMQP short
    string (255 bytes; an event id of 255 characters can take up to 1020), else `otherwise`."""
    if len(events) == 1:
        event_id = events[0].event_id
        # An id of up to 63 characters is at most 252 bytes of UTF-8: no need to encode it to know it fits.
        if len(event_id) < 64 or len(event_id.encode()) <= 255:
            return event_id
    return otherwise


def is_valid_topic(topic: str) -> bool:
    return _TOPIC_RE.fullmatch(topic) is not None
