"""The publish decision, in one place for both publish paths (api/fastpublish.py in plain ASGI, the FastAPI
route in api/routes.py): the API key, the content type, the size limits, the body's four shapes with
whole-request validation, and the broker's confirm. Everything but the 200 is a `Refusal`, returned rather
than raised, that either path turns into the same answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from api.broker import BrokerUnavailable
from api.compat import PublishOutcome, publish_body
from api.deps import State, key_ok
from api.errors import jsonable_errors
from api.metrics import ApiMetrics
from api.settings import ApiSettings
from api.stored import ReceiptsNotConfirmed
from broker.connection import BROKER_ERRORS
from broker.publisher import PublishFailed
from contract.event import Event, Limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A publish request's answer when it is not a 200: 401, 413, 415, 422 (with FastAPI-style items in
    `errors`, their inputs bounded only when answered) or 503."""

    status: int
    detail: str = ""
    errors: list[dict[str, Any]] | None = None
    headers: Mapping[str, str] | None = None

    def response(self) -> JSONResponse:
        """As FastAPI's handlers answer an HTTPException or a validation error."""
        detail = self.detail if self.errors is None else jsonable_errors(self.errors)
        return JSONResponse({"detail": detail}, status_code=self.status, headers=self.headers)


UNAUTHORIZED = Refusal(
    401, "missing or wrong API key (send it as X-API-Key)", headers={"WWW-Authenticate": "Bearer"}
)
RETRY = "re-send the request (duplicates are dropped by the consumer)"


def refuse_headers(
    settings: ApiSettings,
    content_type: str | None,
    content_length: str | None,
    api_key: str | None,
    authorization: str,
) -> Refusal | None:
    """What the request's headers alone decide, before its body is read: 401, then 415, then 413."""
    if settings.api_key and not key_ok(api_key, authorization, settings.api_key):
        return UNAUTHORIZED
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        return Refusal(415, f"content type must be application/json, got {kind!r}")
    limit = settings.max_body_bytes
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        return Refusal(413, f"request body of {content_length} bytes is over the limit of {limit} bytes")
    return None


def body_over_limit(limit: int) -> Refusal:
    """The 413 for a body that grew past MAX_BODY_BYTES while it was read (no or a false Content-Length)."""
    return Refusal(413, f"request body is over the limit of {limit} bytes")


async def publish_confirmed(st: State, metrics: ApiMetrics, events: list[Event]) -> Refusal | None:
    """Hand the events to the broker and wait for every confirm; a 503 (safe to re-send) otherwise."""
    try:
        # asyncio's own deadline (one timer handle): anyio.fail_after cost 23 us a request against 9 us for
        # this, measured in a loop on the bench machine, of a 1 ms single-event POST.
        async with asyncio.timeout(st.settings.publish_timeout):
            publisher = await st.broker.publisher()
            started = time.perf_counter()
            await publisher.publish(events)
            metrics.publish_confirmed(len(events), time.perf_counter() - started)
    except TimeoutError:
        unreachable = not st.broker.connected()
        metrics.publish_unavailable.labels("unreachable" if unreachable else "timeout").inc()
        reason = (
            f"the broker is unreachable ({st.broker.problem()})"
            if unreachable
            else f"the broker did not confirm within {st.settings.publish_timeout:g}s"
        )
        return Refusal(503, f"{reason}; {RETRY}")
    except (BrokerUnavailable, PublishFailed) as exc:
        log.warning("publish failed events=%d error=%s", len(events), exc)
        metrics.publish_unavailable.labels("not_confirmed").inc()
        return Refusal(503, f"the broker did not confirm the events ({exc}); {RETRY}")
    return None


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


def parse_body(raw: bytes, limits: Limits, max_events: int) -> list[Event] | Refusal:
    """Every event of the request, or the refusal (413 or 422) describing everything wrong with it."""
    fast = _valid_events(raw)
    if fast is not None:
        if len(fast) > max_events:
            return Refusal(413, f"{len(fast)} events in one request; the limit is {max_events}")
        single = raw.lstrip()[:1] == b"{"
        too_big = [
            f"body{'' if single else f'.{index}'}.payload is {event.payload_size()} bytes"
            for index, event in enumerate(fast)
            if event.payload_size() > limits.max_payload_bytes
        ]
        if too_big:
            return Refusal(
                413, f"payload over the limit of {limits.max_payload_bytes} bytes: " + ", ".join(too_big[:5])
            )
        return fast
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return _invalid([_error(["body"], f"malformed JSON: {exc}", "json_invalid")])
    shape = _items(data)
    if isinstance(shape, Refusal):
        return shape
    items, prefix, single = shape
    if len(items) > max_events:
        return Refusal(413, f"{len(items)} events in one request; the limit is {max_events}")
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
        return _invalid(errors)
    if oversized:
        return Refusal(
            413, f"payload over the limit of {limits.max_payload_bytes} bytes: " + ", ".join(oversized[:5])
        )
    return events


def _invalid(errors: list[dict[str, Any]]) -> Refusal:
    """Malformed or invalid: 422 with FastAPI-style items; nothing of the request is published."""
    return Refusal(422, errors=errors)


def _items(data: Any) -> tuple[list[Any], list[str | int], bool] | Refusal:
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
            return _invalid(
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
    return _invalid(
        [
            _error(
                ["body"],
                'the body must be an event, an array of events, or {"events": [...]}',
                "model_type",
                data,
            )
        ]
    )


_UNCONFIRMED: tuple[type[Exception], ...] = (BrokerUnavailable, ReceiptsNotConfirmed, *BROKER_ERRORS)


async def publish_stored(st: State, events: list[Event], before: int | None = None) -> JSONResponse:
    """Publish with receipts and wait for the store; one deadline, PUBLISH_TIMEOUT, for both."""
    timeout = st.settings.publish_timeout
    started = time.monotonic()
    deadline = started + timeout
    envelopes = st.receipts.envelopes(events)
    try:
        async with asyncio.timeout(timeout):  # as publish_confirmed: cheaper than anyio.fail_after
            connection = await st.broker.connection()
            await st.receipts.publish(connection, envelopes)
    except TimeoutError:
        reason = (
            f"the broker is unreachable ({st.broker.problem()})"
            if not st.broker.connected()
            else f"the broker did not confirm within {timeout:g}s"
        )
        return Refusal(503, f"{reason}; {RETRY}").response()
    except _UNCONFIRMED as exc:
        log.warning("publish failed events=%d error=%s", len(events), exc)
        return Refusal(503, f"the broker did not confirm the events ({exc}); {RETRY}").response()
    sizes = {receipt: len(group) for receipt, group in envelopes.items()}
    waited = await st.watcher.wait(sizes, max(deadline - time.monotonic(), 0.0), started)
    outcome = PublishOutcome(len(events), waited.new, waited.duplicates, waited.pending, before)
    # 202: confirmed (durable in the broker), not in the store yet; it will be once the consumer catches up.
    status = 202 if waited.pending else 200
    return JSONResponse(publish_body(st.settings.api_compat, outcome), status_code=status)
