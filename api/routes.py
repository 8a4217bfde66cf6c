"""HTTP routes: publish (confirmed before it answers), events, one event, stats, health."""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from api.broker import BrokerLink, BrokerUnavailable, Depths
from api.models import (
    ComponentHealth,
    ConsumerInfo,
    ErrorMessage,
    EventsWrapper,
    Health,
    PublishAccepted,
    QueueInfo,
    Stats,
    StoredEvent,
    ValidationFailed,
)
from api.publish import PayloadTooLarge, RequestInvalid, parse_body
from api.queries import BadCursor, StoreReader, consumer_state, decode_cursor, row_json
from api.settings import ApiSettings
from contract.event import EXAMPLE, TOPIC_PATTERN, Event
from contract.publishing import PublishFailed

log = logging.getLogger(__name__)

router = APIRouter()

_JSON_TYPES = ("application/json",)


class State:
    """What the routes share; built by the app's lifespan."""

    def __init__(self, settings: ApiSettings, reader: StoreReader, broker: BrokerLink) -> None:
        self.settings = settings
        self.reader = reader
        self.broker = broker
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)


async def state(request: Request) -> State:
    value: State = request.app.state.api
    return value


# The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in its
# thread pool, and two thread hops per request cost more than everything else a small GET does.
StateDep = Annotated[State, Depends(state)]


def _key_ok(request: Request, expected: str) -> bool:
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def require_publish_key(request: Request, st: StateDep) -> None:
    if st.settings.api_key and not _key_ok(request, st.settings.api_key):
        raise HTTPException(
            401, "missing or wrong API key (send it as X-API-Key)", headers={"WWW-Authenticate": "Bearer"}
        )


async def require_read_key(request: Request, st: StateDep) -> None:
    if st.settings.api_key and st.settings.api_key_reads and not _key_ok(request, st.settings.api_key):
        raise HTTPException(
            401, "missing or wrong API key (send it as X-API-Key)", headers={"WWW-Authenticate": "Bearer"}
        )


_PUBLISH_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    {"$ref": "#/components/schemas/EventsWrapper"},
                ]
            },
            "examples": {
                "one": {
                    "summary": "one event",
                    "value": EXAMPLE,
                },
                "array": {
                    "summary": "an array of events",
                    "value": [EXAMPLE],
                },
                "wrapped": {
                    "summary": "wrapped in events",
                    "value": {"events": [EXAMPLE]},
                },
            },
        }
    },
}


@router.post(
    "/publish",
    response_model=PublishAccepted,
    summary="Publish events; answers only after the broker confirmed every one",
    openapi_extra={"requestBody": _PUBLISH_BODY},
    responses={
        401: {"model": ErrorMessage, "description": "API key required and missing or wrong"},
        413: {"model": ErrorMessage, "description": "body, event count or a payload over the limit"},
        415: {"model": ErrorMessage, "description": "not application/json"},
        422: {
            "model": ValidationFailed,
            "description": "malformed JSON or an invalid event; nothing published",
        },
        503: {
            "model": ErrorMessage,
            "description": "broker unreachable or no confirm in time; safe to re-send",
        },
    },
    dependencies=[Depends(require_publish_key)],
)
async def publish(request: Request, st: StateDep) -> PublishAccepted | JSONResponse:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        raise HTTPException(415, f"content type must be application/json, got {content_type!r}")
    raw = await _read_limited(request, st.settings.max_body_bytes)
    try:
        events = parse_body(raw, st.settings.limits(), st.settings.max_events_per_request)
    except RequestInvalid as exc:
        return JSONResponse({"detail": _jsonable(exc.errors)}, status_code=422)
    except PayloadTooLarge as exc:
        raise HTTPException(413, str(exc)) from exc
    if events:
        try:
            with anyio.fail_after(st.settings.publish_timeout):
                publisher = await st.broker.publisher()
                await publisher.publish(events)
        except TimeoutError as exc:
            reason = (
                f"the broker is unreachable ({st.broker.problem()})"
                if not st.broker.connected()
                else f"the broker did not confirm within {st.settings.publish_timeout:g}s"
            )
            raise HTTPException(
                503, f"{reason}; re-send the request (duplicates are dropped by the consumer)"
            ) from exc
        except (BrokerUnavailable, PublishFailed) as exc:
            log.warning("publish failed events=%d error=%s", len(events), exc)
            raise HTTPException(
                503,
                f"the broker did not confirm the events ({exc}); re-send the request "
                "(duplicates are dropped by the consumer)",
            ) from exc
    return PublishAccepted(received=len(events), accepted=len(events), rejected=0)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _jsonable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Inputs may hold anything JSON can; keep them, but never let a non-serialisable value turn 422 into 500.
    out = []
    for error in errors:
        value = error.get("input")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            value = repr(value)
        out.append({**error, "input": value})
    return out


@router.get(
    "/events",
    response_model=list[StoredEvent],
    summary="Stored events, oldest first, in pages (next page in the Link header)",
    dependencies=[Depends(require_read_key)],
    responses={422: {"description": "bad limit, topic or cursor"}},
)
async def list_events(
    request: Request,
    st: StateDep,
    topic: Annotated[str | None, Query(description="only this topic", max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    after: Annotated[str | None, Query(description="cursor from the previous page's Link header")] = None,
) -> Response:
    try:
        start = decode_cursor(after) if after else 0
    except BadCursor as exc:
        return JSONResponse(
            {"detail": [{"type": "value_error", "loc": ["query", "after"], "msg": str(exc), "input": after}]},
            status_code=422,
        )
    page = await anyio.to_thread.run_sync(st.reader.page, topic, limit, start)
    headers = {}
    if page.next_cursor is not None:
        url = request.url.include_query_params(after=page.next_cursor, limit=limit)
        headers["Link"] = f'<{url}>; rel="next"'
    # Built from the stored JSON directly (see queries.row_json); response_model still documents it.
    return Response(page.json(), media_type="application/json", headers=headers)


@router.get(
    "/events/{topic}/{event_id:path}",
    response_model=StoredEvent,
    summary="One stored event: did it take effect?",
    responses={404: {"model": ErrorMessage, "description": "not stored (yet)"}},
    dependencies=[Depends(require_read_key)],
)
async def get_event(
    st: StateDep,
    topic: Annotated[str, Path(pattern=TOPIC_PATTERN)],
    event_id: Annotated[str, Path(min_length=1, max_length=255, description="may contain '/'")],
) -> Response:
    found = await anyio.to_thread.run_sync(st.reader.event_row, topic, event_id)
    if found is None:
        raise HTTPException(404, f"no event {event_id!r} stored under topic {topic!r}")
    return Response(row_json(found).encode(), media_type="application/json")


@router.get(
    "/stats",
    response_model=Stats,
    summary="Exact counters from the store",
    dependencies=[Depends(require_read_key)],
)
async def stats(st: StateDep) -> Stats:
    snapshot = await anyio.to_thread.run_sync(st.reader.snapshot)
    depths = await st.broker.depths()
    topology = st.settings.topology()
    uptime = st.uptime()
    return Stats(
        **snapshot.counters,
        topics=sorted(snapshot.topic_counts),
        topic_counts=snapshot.topic_counts,
        uptime=uptime,
        uptime_seconds=uptime,
        started_at=st.started_at,
        store="ok" if snapshot.store == "ok" else "missing",
        queue=QueueInfo(name=topology.queue, messages=depths.queue, consumers=depths.consumers),
        dead_letter_queue=QueueInfo(name=topology.dead_letter_queue, messages=depths.dead_letter_queue),
        consumer=_consumer(
            snapshot.consumer, depths, st.settings.consumer_stall_seconds, consumer_state(st.settings.db_path)
        ),
    )


def _consumer(
    values: dict[str, str], depths: Depths, stall_seconds: float, reported: dict[str, Any] | None = None
) -> ConsumerInfo:
    status = _consumer_status(values.get("last_commit_at"), depths, stall_seconds)
    detail = None
    if reported and reported.get("state") == "store_failing":
        status, detail = "stalled", f"store failing since {reported.get('since')}: {reported.get('detail')}"
    return ConsumerInfo(
        status=status,
        detail=detail,
        started_at=values.get("started_at"),
        last_commit_at=values.get("last_commit_at"),
        journal_mode=values.get("journal_mode"),
        synchronous=values.get("synchronous"),
    )


def _consumer_status(
    last_commit_at: str | None, depths: Depths, stall_seconds: float
) -> Literal["ok", "idle", "stalled", "absent", "unknown"]:
    # The consumer cannot write its own distress into a store that is failing, so health is inferred from
    # what the api can see: messages waiting in the queue, consumers attached, and the last commit's age.
    if depths.queue is None:
        return "unknown"
    age = None
    if last_commit_at is not None:
        age = (datetime.now(UTC) - datetime.fromisoformat(last_commit_at)).total_seconds()
    recent = age is not None and age <= stall_seconds
    if depths.queue > 0 and not depths.consumers:
        return "absent"
    if depths.queue > 0 and not recent:
        return "stalled"
    return "ok" if recent else "idle"


@router.get(
    "/health",
    response_model=Health,
    summary="Can the api serve? Store, broker and consumer reported separately",
    description="200 `healthy`, or 200 `degraded` when messages wait but the consumer is stalled (not "
    "committing, e.g. retrying a failing store) or absent; 503 `unhealthy` when the store exists but cannot "
    "be read. Broker reachability never makes the api unhealthy: reads keep working without it.",
    responses={503: {"model": Health, "description": "the store exists but cannot be read"}},
)
async def health(st: StateDep) -> Health | JSONResponse:
    depths = await st.broker.depths()
    reported = consumer_state(st.settings.db_path)
    consumer = _consumer({}, depths, st.settings.consumer_stall_seconds, reported)
    try:
        store_status = await anyio.to_thread.run_sync(st.reader.check)
        store = ComponentHealth(
            status="ok" if store_status == "ok" else "missing",
            detail=None if store_status == "ok" else "the consumer has not created it yet",
        )
        if store_status == "ok":
            snapshot = await anyio.to_thread.run_sync(st.reader.snapshot)
            consumer = _consumer(snapshot.consumer, depths, st.settings.consumer_stall_seconds, reported)
    except sqlite3.Error as exc:
        store = ComponentHealth(status="error", detail=f"{type(exc).__name__}: {exc}")
    broker = (
        ComponentHealth(status="connected")
        if st.broker.connected()
        else ComponentHealth(status="unreachable", detail=st.broker.problem())
    )
    status: Literal["healthy", "degraded", "unhealthy"] = "healthy"
    if consumer.status in ("stalled", "absent"):
        status = "degraded"
    if store.status == "error":
        status = "unhealthy"
    body = Health(
        status=status,
        store=store,
        broker=broker,
        consumer=consumer,
        uptime_seconds=st.uptime(),
    )
    if body.status == "unhealthy":
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    return body


# Referenced from the publish request body schema in the OpenAPI document.
OPENAPI_MODELS = (Event, EventsWrapper)
