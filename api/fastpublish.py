"""POST /publish and POST /events answered in plain ASGI: the hot path of the publish shim, below FastAPI.

Every POST to a publish route comes here first, and what its headers decide (api/publish.py's
`refuse_headers`: 401, 415, 413) is answered here, before FastAPI would validate a query string. A request
whose query string is other than one valid `wait=` (FastAPI's validation and 422), or under
API_COMPAT=seed004 (which looks stored keys up), then goes on to the FastAPI route in api/routes.py, which
stays registered, so the OpenAPI document is its; every other one, `?wait=stored` included, is read, decided
and published here with the same functions the route calls (api/publish.py), so that both answer alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Literal

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from api.compat import PublishOutcome, publish_body
from api.deps import State
from api.metrics import ApiMetrics
from api.publish import (
    Refusal,
    body_over_limit,
    parse_body,
    publish_confirmed,
    publish_stored,
    refuse_headers,
)
from api.settings import Profile, Wait

_WANTED = frozenset((b"content-type", b"content-length", b"x-api-key", b"authorization"))
# The query strings answered here, with the `wait` each asks for ("": none, PUBLISH_WAIT decides).
_WAITS: dict[bytes, Wait | Literal[""]] = {b"": "", b"wait=stored": "stored", b"wait=confirmed": "confirmed"}


class PublishFastPath:
    """Pure ASGI, in front of everything FastAPI does per request (api/app.py's `EventApi` calls it first).

    Measured with `python -m bench --only pika_roundtrip,shim_sequential`: the FastAPI route spent 40-50 % of
    the api's busy time per single-event POST in routing, dependencies and middlewares; with this path as a
    middleware inside them, FastAPI's own per-request layers (its telemetry check reads the environment on
    every request, Starlette's error and body-limit middlewares, the metrics middleware) and their wrapping
    of each `send` still took 7.5 % of the api's py-spy samples. So it sits outside them, and counts its own
    requests in the HTTP metrics as the metrics middleware would.
    """

    def __init__(self, app: ASGIApp, routes: Mapping[str, APIRoute], owner: Starlette) -> None:
        self.app = app  # FastAPI's own handling, for everything this path does not answer
        self.routes = routes  # path -> the FastAPI route it stands in for, named in the HTTP metrics
        self.owner = owner  # the application whose state (api, metrics) this path reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = self.owner.state
        st: State = state.api
        # The first of repeated headers counts, as with Starlette's `Headers.get`.
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in found:
                found[name] = value.decode("latin-1")
        refusal = refuse_headers(
            st.settings,
            found.get(b"content-type"),
            found.get(b"content-length"),
            found.get(b"x-api-key"),
            found.get(b"authorization", ""),
        )
        settings = st.settings
        wait = _WAITS.get(scope["query_string"])
        if refusal is None and (wait is None or settings.api_compat == "seed004"):
            # Any other query string, and FastAPI's validation of it; seed004's look-up of stored keys: the
            # FastAPI route's.
            await self.app(scope, receive, send)
            return
        metrics: ApiMetrics = state.metrics
        status = 500
        try:
            answer = (
                refusal.response()
                if refusal is not None
                else await self._publish(st, metrics, receive, settings.waits_for(wait or None))
            )
            if isinstance(answer, JSONResponse):
                status = answer.status_code
                await answer(scope, receive, send)
            else:
                # The 200 as JSONResponse sends it (same headers, same order), without building one: building
                # and rendering it per request was 5.9 % of the api's py-spy samples on single-event POSTs.
                status = 200
                await send({"type": "http.response.start", "status": 200, "headers": answer[0]})
                await send({"type": "http.response.body", "body": answer[1]})
        finally:
            metrics.observe_request("POST", route.path, status, time.perf_counter() - started)

    async def _publish(
        self, st: State, metrics: ApiMetrics, receive: Receive, wait: Wait
    ) -> JSONResponse | tuple[tuple[tuple[bytes, bytes], ...], bytes]:
        limit = st.settings.max_body_bytes
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect  # as Starlette's `Request.stream` does
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return body_over_limit(limit).response()
            chunks.append(chunk)
            more = message.get("more_body", False)
        events = parse_body(b"".join(chunks), st.settings.limits(), st.settings.max_events_per_request)
        if isinstance(events, Refusal):
            return events.response()
        if wait == "stored":
            return await publish_stored(st, events)
        if events:
            refusal = await publish_confirmed(st, metrics, events)
            if refusal is not None:
                return refusal.response()
        return _accepted(st.settings.api_compat, len(events))


@functools.lru_cache(maxsize=64)
def _accepted(profile: Profile, received: int) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """The headers and body of the 200 for `received` events; the same for every request of that size."""
    response = JSONResponse(publish_body(profile, PublishOutcome(received=received)))
    return tuple(response.raw_headers), bytes(response.body)
