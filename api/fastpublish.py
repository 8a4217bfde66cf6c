"""POST /publish and POST /events answered in plain ASGI: the hot path of the publish shim, below FastAPI.

Only a request the FastAPI route would accept without asking anything of its machinery comes here: no query
string (so no `?wait=`), a plain publish that waits for the broker's confirm only (PUBLISH_WAIT, not under
API_COMPAT=seed004, which looks stored keys up), a JSON content type, no declared length over the limit,
and the right API key when one is set. Everything else goes on to the FastAPI routes in api/routes.py, which
stay registered, so the OpenAPI document and every other answer are theirs. What this path answers (200,
413, 422, 503) it builds exactly as they do, from the same functions.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Mapping

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from api.compat import PublishOutcome, publish_body
from api.deps import State
from api.errors import jsonable_errors
from api.metrics import ApiMetrics
from api.publish import PayloadTooLarge, RequestInvalid, parse_body
from api.routes import publish_confirmed
from api.settings import Profile

_WANTED = frozenset((b"content-type", b"content-length", b"x-api-key", b"authorization"))


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
        if route is None or scope["method"] != "POST" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = self.owner.state
        st: State = state.api
        settings = st.settings
        if settings.waits_for() == "stored" or settings.api_compat == "seed004":
            # A publish that waits for the store (PUBLISH_WAIT), or seed004's look-up of stored keys: the
            # FastAPI route's.
            await self.app(scope, receive, send)
            return
        # The first of repeated headers counts, as with Starlette's `Headers.get`.
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in found:
                found[name] = value.decode("latin-1")
        content_type = found.get(b"content-type", "application/json").split(";")[0].strip().lower()
        declared, key = found.get(b"content-length"), found.get(b"x-api-key")
        auth = found.get(b"authorization", "")
        json_body = content_type == "application/json" or content_type.endswith("+json")
        too_long = declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes
        if not json_body or too_long or (settings.api_key and not _key_ok(key, auth, settings.api_key)):
            await self.app(scope, receive, send)  # 401, 413 and 415 as the FastAPI route words them
            return
        metrics: ApiMetrics = state.metrics
        status = 500
        try:
            answer = await self._publish(st, metrics, receive)
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
        self, st: State, metrics: ApiMetrics, receive: Receive
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
                return _error(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        try:
            events = parse_body(b"".join(chunks), st.settings.limits(), st.settings.max_events_per_request)
        except RequestInvalid as exc:
            return JSONResponse({"detail": jsonable_errors(exc.errors)}, status_code=422)
        except PayloadTooLarge as exc:
            return _error(413, str(exc))
        if events:
            try:
                await publish_confirmed(st, metrics, events)
            except HTTPException as exc:
                return _error(exc.status_code, exc.detail, exc.headers)
        return _accepted(st.settings.api_compat, len(events))


@functools.lru_cache(maxsize=64)
def _accepted(profile: Profile, received: int) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """The headers and body of the 200 for `received` events; the same for every request of that size."""
    response = JSONResponse(publish_body(profile, PublishOutcome(received=received)))
    return tuple(response.raw_headers), bytes(response.body)


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error as FastAPI's HTTPException handler answers it."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _key_ok(key: str | None, auth: str, expected: str) -> bool:
    """api.deps' key check, on the raw header values."""
    given = key
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
