"""GET /events/stream: the live tail as Server-Sent Events, with the filters of GET /events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import StateDep, require_read_key
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


@router.get(
    "/events/stream",
    response_class=EventStream,
    summary="Live tail: stored events as Server-Sent Events, resumable with Last-Event-ID",
    description=_DESCRIPTION,
    dependencies=[Depends(require_read_key)],
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        422: {"description": "bad filter or position"},
    },
)
async def stream(
    st: StateDep,
    chosen: SelectionDep,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, lt=2**63, description="resume after this position"),
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, lt=2**63, description="resume after this position (as Last-Event-ID, which wins)"),
    ] = None,
) -> EventStream:
    hub: TailHub = st.tail
    sub = await hub.join(chosen, last_event_id if last_event_id is not None else after)
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
