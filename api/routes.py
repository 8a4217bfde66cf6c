"""HTTP routes: publish (confirmed before it answers), events, one event, stats."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from api.compat import (
    PublishOutcome,
    already_stored,
    events_body,
    events_descending,
    publish_body,
    stats_body,
)
from api.deps import StateDep, require_read_key
from api.health import consumer_info, store_info
from api.metrics import metrics_of
from api.models import (
    DeadLetterStats,
    ErrorMessage,
    EventsWrapper,
    Gone,
    PublishAccepted,
    QueueInfo,
    RetentionInfo,
    Stats,
    StoredEvent,
    ValidationFailed,
)
from api.paging import AfterQuery, bad_cursor, next_link
from api.publish import (
    Refusal,
    body_over_limit,
    parse_body,
    publish_confirmed,
    publish_stored,
    refuse_headers,
)
from api.queries import NEWEST, BadCursor, Page, decode_cursor, row_json
from api.search import FIELD_PARAMETER
from api.selection import SelectionDep
from api.settings import Wait
from contract import status as status_file
from contract.event import EXAMPLE, TOPIC_PATTERN, Event
from store import Expired, Snapshot

log = logging.getLogger(__name__)

router = APIRouter()

_JSON_TYPES = ("application/json",)


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


_PUBLISH_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": PublishAccepted,
        "description": "wait=stored: confirmed by the broker, but `pending` events were not stored within "
        "PUBLISH_TIMEOUT; they will be once the consumer catches up",
    },
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
}

_PUBLISH_DESCRIPTION = (
    'The body is one event, an array of events, `{"events": [...]}` or `{"events": {...}}`. The whole '
    "request is validated first: any invalid event gives 422 and nothing is published. Unknown top-level "
    "fields of an event are accepted and not stored."
)


@router.post(
    "/publish",
    response_model=PublishAccepted,
    summary="Publish events; answers only after the broker confirmed every one",
    description=_PUBLISH_DESCRIPTION,
    openapi_extra={"requestBody": _PUBLISH_BODY},
    responses=_PUBLISH_RESPONSES,
)
@router.post(
    "/events",
    response_model=PublishAccepted,
    summary="Alias of POST /publish",
    description="The same as `POST /publish`: the same body shapes, limits, errors and answers. "
    + _PUBLISH_DESCRIPTION,
    operation_id="publish_alias_events_post",
    openapi_extra={"requestBody": _PUBLISH_BODY},
    responses=_PUBLISH_RESPONSES,
)
async def publish(
    request: Request,
    st: StateDep,
    wait: Annotated[
        Wait | None,
        Query(
            description="`stored`: answer only once every event is also committed in the store (200, with "
            "`new` and `duplicates`), or 202 with `pending` if the store has not caught up within "
            "PUBLISH_TIMEOUT. `confirmed`: answer once the broker confirmed every event. Unset: PUBLISH_WAIT "
            "(`confirmed`, or `stored` under API_COMPAT seed003 and seed004)"
        ),
    ] = None,
) -> JSONResponse:
    # In the product the fast path in front (api/fastpublish.py) has already asked refuse_headers and
    # answered any refusal itself; asked again here, the route stands on its own.
    headers = request.headers
    refusal = refuse_headers(
        st.settings,
        headers.get("content-type"),
        headers.get("content-length"),
        headers.get("x-api-key"),
        headers.get("authorization", ""),
    )
    if refusal is not None:
        return refusal.response()
    raw = await _read_limited(request, st.settings.max_body_bytes)
    if isinstance(raw, Refusal):
        return raw.response()
    events = parse_body(raw, st.settings.limits(), st.settings.max_events_per_request)
    if isinstance(events, Refusal):
        return events.response()
    profile = st.settings.api_compat
    # seed004 answers how many were already stored when the request arrived, as that aggregator did.
    # A failing store is a 503 like any read's (api/errors.py).
    before = await already_stored(st.reader, events) if profile == "seed004" else None
    if st.settings.waits_for(wait) == "stored":
        return await publish_stored(st, events, before)
    if events:
        refusal = await publish_confirmed(st, metrics_of(request), events)
        if refusal is not None:
            return refusal.response()
    return JSONResponse(publish_body(profile, PublishOutcome(received=len(events), stored_before=before)))


async def _read_limited(request: Request, limit: int) -> bytes | Refusal:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return body_over_limit(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@router.get(
    "/events",
    response_model=list[StoredEvent],
    summary="Stored events, oldest first (or newest first), in pages (next page in the Link header)",
    description="`topic`, `source`, `since` and `until` (on `received_at`, when the consumer stored the "
    "event: ISO 8601, `since` inclusive, `until` exclusive, no offset meaning UTC), `q` (words and phrases) "
    "and `payload.<field>` (field equality) combine; each is served by an index. `order=desc` pages from "
    "the newest backwards.",
    dependencies=[Depends(require_read_key)],
    responses={
        409: {
            "model": ErrorMessage,
            "description": "q or payload.<field> asked of a store whose SEARCH is off",
        },
        422: {"description": "bad limit, topic, cursor, q or payload.<field>"},
    },
    openapi_extra={"parameters": [FIELD_PARAMETER]},
)
async def list_events(
    request: Request,
    st: StateDep,
    chosen: SelectionDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    after: AfterQuery = None,
    order: Annotated[Literal["asc", "desc"] | None, Query(description="asc: oldest first (default)")] = None,
) -> Response:
    descending = events_descending(st.settings.api_compat) if order is None else order == "desc"
    topic, filters = chosen.topic, chosen.filters
    try:
        start = decode_cursor(after) if after else (NEWEST if descending else 0)
    except BadCursor as exc:
        return bad_cursor(exc, after)
    page = Page.of(await st.reader.page(topic, limit, start, descending, filters))
    headers = next_link(request, page.next_cursor, limit)
    # Built from the stored JSON directly (see queries.row_json); response_model still documents it.
    return Response(events_body(st.settings.api_compat, page), media_type="application/json", headers=headers)


@router.get(
    "/events/{topic}/{event_id:path}",
    response_model=StoredEvent,
    summary="One stored event: did it take effect?",
    responses={
        404: {"model": ErrorMessage, "description": "not stored (yet)"},
        410: {"model": Gone, "description": "stored once, expired by RETENTION: the key is still known"},
    },
    dependencies=[Depends(require_read_key)],
)
async def get_event(
    st: StateDep,
    topic: Annotated[str, Path(pattern=TOPIC_PATTERN)],
    event_id: Annotated[str, Path(min_length=1, max_length=255, description="may contain '/'")],
) -> Response:
    found = await st.reader.event_row(topic, event_id)
    if found is None:
        raise HTTPException(404, f"no event {event_id!r} stored under topic {topic!r}")
    if isinstance(found, Expired):
        gone = Gone(
            detail=f"event {event_id!r} under topic {topic!r} expired at {found.expired_at} (RETENTION)",
            received_at=found.received_at,
            expired_at=found.expired_at,
        )
        return JSONResponse(gone.model_dump(), status_code=410)
    return Response(row_json(found).encode(), media_type="application/json")


@router.get(
    "/stats",
    response_model=Stats,
    summary="Exact counters from the store",
    dependencies=[Depends(require_read_key)],
)
async def stats(st: StateDep) -> JSONResponse:
    snapshot = await st.reader.snapshot()
    dead = await st.reader.dead_letter_counts()
    depths = await st.broker.depths()
    age = None if depths.measured_at is None else round(max(0.0, time.time() - depths.measured_at), 3)
    topology = st.settings.topology()
    uptime = st.uptime()
    received = snapshot.counters["received"]
    body = Stats(
        **snapshot.counters,
        unique_rate=_percent(snapshot.counters["unique_processed"], received),
        duplicate_rate=_percent(snapshot.counters["duplicate_dropped"], received),
        topics=list(snapshot.topic_counts),  # in the order the topics were first stored
        topic_counts=snapshot.topic_counts,
        topic_duplicates=snapshot.topic_duplicates,
        topic_conflicts=snapshot.topic_conflicts,
        uptime=uptime,
        uptime_seconds=uptime,
        started_at=st.started_at,
        store="ok" if snapshot.store == "ok" else "missing",
        store_info=store_info(snapshot.durability),
        queue=QueueInfo(
            name=topology.queue, messages=depths.queue, consumers=depths.consumers, age_seconds=age
        ),
        dead_letter_queue=QueueInfo(
            name=topology.dead_letter_queue, messages=depths.dead_letter_queue, age_seconds=age
        ),
        dead_letters=DeadLetterStats(by_reason=dead.by_kind, kept=dead.kept, dropped=dead.dropped)
        if snapshot.store == "ok"
        else None,
        consumer=consumer_info(
            snapshot.consumer,
            depths,
            st.settings.consumer_stall_seconds,
            status_file.read_or_none(st.settings.db_path),
        ),
        **holdings_fields(snapshot),
    )
    return JSONResponse(stats_body(st.settings.api_compat, body))


def holdings_fields(snapshot: Snapshot) -> dict[str, Any]:
    held = snapshot.holdings
    if held is None:
        return {}
    return {
        "stored_events": held.stored_events,
        "expired_events": held.expired_events,
        "oldest_received_at": held.oldest_received_at,
        "retention": RetentionInfo(
            events_seconds=held.retention.events.total_seconds() if held.retention.events else None,
            keys_seconds=held.retention.keys.total_seconds() if held.retention.keys else None,
        ),
        "store_size_bytes": held.size_bytes,
    }


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


# Referenced from the publish request body schema in the OpenAPI document.
OPENAPI_MODELS = (Event, EventsWrapper)
