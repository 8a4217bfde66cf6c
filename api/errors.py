"""Error answers: 422 items (`type`, `loc`, `msg`, `input`) whose echo of the input is bounded; 503 while the
store cannot be read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from store import StoreError
from store.search import SearchOff

# Enough of the offending value to recognise it; a client that sent 30 MiB does not get 30 MiB back.
ECHO_LIMIT = 200


def bounded(value: Any) -> Any:
    """The value itself when its JSON is short; otherwise a prefix of that JSON (or of the string), marked."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        # Anything JSON cannot hold is shown as Python sees it, so a 422 never turns into a 500.
        text = repr(value)
        value = text
    if len(text) <= ECHO_LIMIT:
        return value
    return f"{text[:ECHO_LIMIT]}... ({len(text)} characters, truncated)"


def jsonable_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for error in errors:
        msg = str(error.get("msg", ""))
        if len(msg) > 2 * ECHO_LIMIT:  # a message may quote the input too (a bad cursor's does)
            msg = msg[: 2 * ECHO_LIMIT] + "... (truncated)"
        out.append(
            {
                "type": error.get("type"),
                "loc": error.get("loc"),
                "msg": msg,
                "input": bounded(error.get("input")),
            }
        )
    return out


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": jsonable_errors(list(errors))}, status_code=422)


def bound_validation_errors(app: FastAPI) -> None:
    """FastAPI's own 422s (query, path and header parameters) echo the input in full; these do not."""
    app.add_exception_handler(RequestValidationError, _request_invalid)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # A read that the store cannot answer right now (PostgreSQL restarting, an unreadable SQLite file) is a
    # 503 the client may retry, not a 500: the events are safe in the broker or the store meanwhile.
    return JSONResponse({"detail": f"the store cannot be read right now: {exc}"}, status_code=503)


def store_errors_are_503(app: FastAPI) -> None:
    app.add_exception_handler(StoreError, _store_unavailable)


async def _search_off(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def search_off_is_409(app: FastAPI) -> None:
    """A search of a store whose consumer runs without SEARCH=on: the store cannot answer it (never by a
    full scan); the message says how to turn it on."""
    app.add_exception_handler(SearchOff, _search_off)
