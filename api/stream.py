"""GET /events/stream: the live tail as Server-Sent Events, with the filters of GET /events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.deps import StateDep, require_read_key
from api.search import FIELD_PARAMETER, SEARCH_OFF_RESPONSE
from api.selection import SelectionDep
from api.tail import READ_PAGE, Subscriber, TailHub, frame
from store import Reader

router = APIRouter()

# A comment line this often keeps proxies from closing an idle stream and finds clients that went away.
KEEPALIVE = 15.0
# What an EventSource waits before it reconnects (with Last-Event-ID) after the stream ended.
RETRY_MS = 1000


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


_DESCRIPTION = """Every stored event that matches the filters, once it is committed, as Server-Sent Events:
`id` is the event's position, `data` its JSON as `GET /events` gives it. Send `Last-Event-ID` (an
EventSource does on reconnect) to resume right after that position: no gap, no repeat. Without it the
stream starts with the next event stored.

A client that does not keep up has a bounded buffer on the server. When it is full the stream ends with
`event: overflow`, whose `id` and `data.resume_from` give the position to resume from."""


_BAD_ID = "Last-Event-ID must be a position: an integer from 0 to 2**63-1"
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "resume after this position (an EventSource sends it when it reconnects)",
    "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
}
# One Server-Sent Event (as OpenAPI 3.1 describes an event stream's items): an event, or the overflow that
# ends the stream of a client that read too slowly.
_OVERFLOW = {
    "type": "object",
    "properties": {
        "reason": {"type": "string"},
        "resume_from": {"type": "integer", "minimum": 0, "description": "send as Last-Event-ID to resume"},
    },
    "required": ["reason", "resume_from"],
}
_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["message", "overflow"]},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's position"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"oneOf": [{"$ref": "#/components/schemas/StoredEvent"}, _OVERFLOW]},
        },
    },
    "required": ["event", "data"],
}


def _position(text: str) -> int | None:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value < 2**63 else None


@router.get(
    "/events/stream",
    response_class=EventStream,
    summary="Live tail: stored events as Server-Sent Events, resumable with Last-Event-ID",
    description=_DESCRIPTION,
    dependencies=[Depends(require_read_key)],
    responses={
        200: {"content": {"text/event-stream": {"schema": _EVENT_SCHEMA}}},
        409: SEARCH_OFF_RESPONSE,
        422: {"description": "bad filter or position"},
    },
    openapi_extra={"parameters": [_LAST_EVENT_ID, FIELD_PARAMETER]},
)
async def stream(
    request: Request,
    st: StateDep,
    chosen: SelectionDep,
    after: Annotated[
        int | None,
        Query(ge=0, lt=2**63, description="resume after this position (as Last-Event-ID, which wins)"),
    ] = None,
) -> Response:
    # Read here rather than as a FastAPI Header parameter: that one's schema would be "integer or null",
    # and a client (or schemathesis) may then send the text "null".
    given = request.headers.get("last-event-id")
    if given is not None:
        position = _position(given)
        if position is None:
            detail = [
                {"type": "int_parsing", "loc": ["header", "Last-Event-ID"], "msg": _BAD_ID, "input": given}
            ]
            return JSONResponse({"detail": detail}, status_code=422)
        after = position
    if not chosen.in_memory:
        # A filter only the store evaluates (a search): asked once now, so what the store refuses is this
        # request's error answer (api/errors.py), not a stream that ends at once.
        await st.reader.page(chosen.topic, 1, 0, filters=chosen.filters)
    hub: TailHub = st.tail
    sub = await hub.join(chosen, after)
    return EventStream(_events(hub, st.reader, sub), headers={"Cache-Control": "no-store"})


async def _events(hub: TailHub, reader: Reader, sub: Subscriber) -> AsyncIterator[bytes]:
    try:
        # The position the stream starts from, as a comment: a client knows it is listening from here on.
        yield f"retry: {RETRY_MS}\n: from {sub.taken}\n\n".encode()
        async for data in _catch_up(reader, sub):
            yield data
        while True:
            taken = await sub.take(KEEPALIVE)
            if taken is not None:
                yield taken[1]
            elif sub.finished:
                return
            elif sub.overflowed:
                reason = "this client read too slowly: its buffer on the server is full"
                body = json.dumps({"reason": reason, "resume_from": sub.taken})
                yield f"id: {sub.taken}\nevent: overflow\ndata: {body}\n\n".encode()
                return
            else:
                yield b": keepalive\n\n"
    finally:
        hub.leave(sub)


async def _catch_up(reader: Reader, sub: Subscriber) -> AsyncIterator[bytes]:
    """The stored rows from where the client resumes up to where the hub took over, read once."""
    chosen = sub.selection
    after = sub.taken
    while after < sub.start:
        page = await reader.page(chosen.topic, READ_PAGE, after, filters=chosen.filters)
        for row in page.rows:
            if row[0] > sub.start:
                return
            yield frame(row)
            sub.taken = after = row[0]
        if page.next_after is None:
            return
