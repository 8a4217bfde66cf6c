"""The event model and the wire format of a message body: one event or an envelope (a JSON array)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

TOPIC_PATTERN = r"^[A-Za-z0-9._:-]{1,255}$"
_TOPIC_RE = re.compile(TOPIC_PATTERN)

DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# The consumer's JSON parser stops at about 200 levels; a fixed, much lower limit on payloads makes "valid"
# mean the same to every entry point (HTTP shim, CLI, consumer) whatever envelope an event travels in.
MAX_PAYLOAD_DEPTH = 64


class InvalidEvent(ValueError):
    """A message body that can never be processed: not JSON, not the schema, or over a limit."""


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

    _payload_json: str = PrivateAttr(default="")

    @field_validator("timestamp")
    @classmethod
    def _normalise_timestamp(cls, value: str) -> str:
        return normalise_timestamp(value)

    @field_validator("payload")
    @classmethod
    def _check_depth(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _deeper_than(value, MAX_PAYLOAD_DEPTH):
            raise ValueError(f"payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep")
        return value

    @model_validator(mode="after")
    def _serialise_payload(self) -> Event:
        # Serialised once here: it is what gets stored and what the size limit applies to. allow_nan=False
        # because the JSON parser accepts NaN and Infinity, which no JSON client could read back.
        try:
            self._payload_json = json.dumps(
                self.payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"payload is not valid JSON: {exc}") from None
        return self

    def key(self) -> tuple[str, str]:
        return (self.topic, self.event_id)

    def payload_json(self) -> str:
        return self._payload_json

    def content_hash(self) -> bytes:
        """Hash of what a publisher means by the event; a reused id with other content is a conflict."""
        return content_hash(self.timestamp, self.source, self.payload)


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


def normalise_timestamp(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # astimezone overflows for instants outside the years 1-9999 once shifted to UTC.
        return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError):
        raise ValueError(f"not an ISO 8601 timestamp in the years 1-9999 UTC: {value!r}") from None


_ONE = TypeAdapter(Event)
_MANY = TypeAdapter(list[Event])


def check_payload_size(event: Event, limits: Limits) -> None:
    size = len(event.payload_json().encode())
    if size > limits.max_payload_bytes:
        raise InvalidEvent(f"payload of {size} bytes is over the limit of {limits.max_payload_bytes} bytes")


def decode(body: bytes, limits: Limits) -> list[Event]:
    """Decode a message body into its events, or raise InvalidEvent for the whole message."""
    if len(body) > limits.max_message_bytes:
        raise InvalidEvent(
            f"message of {len(body)} bytes is over the limit of {limits.max_message_bytes} bytes"
        )
    # Peek at the first non-blank byte rather than parsing twice: '[' is an envelope, anything else one event.
    stripped = body.lstrip()
    try:
        if stripped[:1] == b"[":
            events = _MANY.validate_json(body)
        else:
            events = [_ONE.validate_json(body)]
    except ValidationError as exc:
        raise InvalidEvent(describe(exc)) from exc
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


def encode(events: list[Event]) -> bytes:
    """An envelope for several events, a plain object for one (readable by any consumer of single events)."""
    if len(events) == 1:
        return _ONE.dump_json(events[0])
    return _MANY.dump_json(events)


def is_valid_topic(topic: str) -> bool:
    return _TOPIC_RE.fullmatch(topic) is not None
